"""§10: the server-to-server link, with the suite as the target's other rank.

The suite listens as rank 0 (or connects as rank 1 to a target that is rank 0), does the
24-byte handshake, and sums partials with the target over the link while the target
carries out COMM_ALLREDUCE: what the target sends must be its partial in the link's format
(F32, or ggml's BF16 rounding of it from 32768 elements on), and what GET_TENSOR shows after
must be its own partial plus the suite's as the link carried it.  COMM_INIT's refusals
(ok=0, the connection kept) and where rank 0 listens and rank 1 connects are checked with
addresses the target must not link with.  A target may decline any link (ok=0: its client
then reduces through itself); the cases that need one are skipped then.
"""

from __future__ import annotations

import socket
import time

import numpy as np

from ggml_rpc_spec.client.linkpeer import (Exchange, LinkPeer, accepting, connect, linked, listener, other_loopback,
                                            rank0_port)
from ggml_rpc_spec.client.rpc import ServerClosed
from ggml_rpc_spec.protocol import Command, make_tensor
from ggml_rpc_spec.protocol.comm import (
    BF16_MIN_ELEMENTS,
    WORLD,
    decode_partial,
    encode_partial,
    reduce,
    wire_bf16,
    wire_size,
)

from ..core import Check, Checks, Context, SHOULD, new_buffer, require

checks = Checks()  # this module's cases (see conformance.cases)

C = Command
UNAUTHENTICATED = "unauthenticated peering"


# -- COMM_INIT --------------------------------------------------------------------------------------


@checks.check("10.1", "COMM_INIT naming no device, a world other than 2 or a rank not below it answers ok=0 "
              "and keeps the connection", rule="comm.ranks", needs=(C.COMM_INIT,))
def comm_ranks(ctx: Context) -> None:
    rpc = ctx.client()
    port = rank0_port(rpc.address)  # where a server that took the request would listen
    for what, fields in (("device", dict(device=rpc.device_count(), rank=0, world=WORLD)),
                         ("world", dict(device=ctx.device, rank=0, world=WORLD + 1)),
                         ("rank", dict(device=ctx.device, rank=WORLD, world=WORLD))):
        ok = rpc.comm_init(port=port, device=fields["device"], rank=fields["rank"], world=fields["world"])
        require(not ok, f"ok=0 for {what}={fields[what]}", "ok=1")
    require(rpc.alignment(ctx.device) > 0, "the connection still serves", "it does not")


def _stranger(ctx: Context, rpc) -> str:
    """A loopback address other than the target's: one it must not link with (by default a
    server admits its own address, 127.0.0.1 and ::1 only)."""
    stranger = other_loopback(rpc.address[0])
    if stranger is None:
        ctx.skip(f"the target {rpc.address[0]} is not on an IPv4 loopback address: the suite knows no address of "
                 "the target's machine the target must refuse")
    return stranger


@checks.check("10.1", "COMM_INIT as rank 1 naming a host the server does not admit answers ok=0 and never "
              "connects", rule="comm.peers", needs=(C.COMM_INIT,), advisory=UNAUTHENTICATED)
def comm_peers(ctx: Context) -> None:
    rpc = ctx.client()
    stranger = _stranger(ctx, rpc)
    sock = listener(stranger)
    port = sock.getsockname()[1]
    peer = ctx.attach(LinkPeer(0, accepting(sock), timeout=ctx.timeout)).start()
    ok = rpc.comm_init(rank=1, host=stranger, port=port, device=ctx.device)
    peer.close()  # a target that connected did so before answering (the handshake comes first)
    require(not peer.log.peer, f"no connection to {stranger}:{port}",
            f"the target connected from {peer.log.peer} and answered ok={int(ok)}")
    require(not ok, "ok=0", "ok=1 without a link")
    require(rpc.alignment(ctx.device) > 0, "the connection still serves", "it does not")


def _rank0_or_skip(ctx: Context, rpc, port: int, dial) -> tuple:
    """COMM_INIT asking the target to be rank 0 on `port` while the suite, as rank 1, dials it
    with `dial`: (ok, the suite's link log); the case is skipped when the target declines."""
    peer = ctx.attach(LinkPeer(1, dial, timeout=ctx.timeout)).start()
    ok = rpc.comm_init(rank=0, port=port, device=ctx.device)
    log = peer.finish()
    if not ok and not log.peer:
        ctx.skip(f"the target declined to listen as rank 0 (COMM_INIT answered ok=0): {log.error}")
    return ok, log


def _reaches(address: tuple[str, int], timeout: float) -> str:
    """Whether a connection to `address` is taken: "accepted" or why not."""
    try:
        socket.create_connection(address, timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return "accepted"


@checks.check("10.1", "rank 0 listens for its peer on its own address only", level=SHOULD, rule="comm.listen",
              needs=(C.COMM_INIT,), advisory=UNAUTHENTICATED)
def comm_listen(ctx: Context) -> None:
    rpc = ctx.client()
    host, stranger = rpc.address[0], _stranger(ctx, rpc)
    port = rank0_port(rpc.address)

    def connect_then_try_the_stranger(peer: LinkPeer, deadline: float):
        # While the target waits for the suite's handshake on the first connection, its
        # listener is still open: a connection to the other address tells where it listens.
        opened = connect((host, port), peer, deadline)
        if opened is not None:
            peer.log.notes["stranger"] = _reaches((stranger, port), ctx.timeout / 4)
        return opened

    ok, log = _rank0_or_skip(ctx, rpc, port, connect_then_try_the_stranger)
    try:
        require(ok and log.peer, f"ok=1 once the suite connected to {host}:{port}",
                f"ok={int(ok)}, link {log.peer or 'not made'} {log.error}")
        require(log.notes.get("stranger") != "accepted", f"{stranger}:{port} refused while the target listened on "
                f"{host}:{port}", f"{stranger}:{port} accepted a connection: the target listens on every interface")
    finally:  # a link left up would answer the next case's COMM_INIT (upstream keeps it per device)
        rpc.comm_free(ctx.device)


@checks.check("10.1", "COMM_INIT whose link cannot be set up (port 0) answers ok=0 and keeps the connection",
              rule="comm.no-link", needs=(C.COMM_INIT,))
def comm_no_link(ctx: Context) -> None:
    rpc = ctx.client()
    host = rpc.connection().getsockname()[0]
    require(not rpc.comm_init(rank=1, host=host, port=0, device=ctx.device), "ok=0", "ok=1 for a link to port 0")
    require(rpc.device_count() >= 1, "the connection kept", "closed")


def _linked_or_skip(ctx: Context, rpc) -> LinkPeer:
    """The suite linked with the target as rank 1; the case is skipped when the target declines."""
    peer = linked(rpc, ctx.attach, device=ctx.device, timeout=ctx.timeout)
    if peer is None:
        ctx.skip("the target declined to link with the suite (COMM_INIT answered ok=0)")
    return peer


@checks.check("10.1", "COMM_INIT answers ok=1 once the 24-byte handshake is done, with all-zero caps",
              rule="comm.handshake", needs=(C.COMM_INIT,))
def comm_handshake(ctx: Context) -> None:
    rpc = ctx.client()
    peer = _linked_or_skip(ctx, rpc)
    log = peer.finish()
    require(log.handshake == bytes(24), "24 zero bytes of conn_caps from the target on the link",
            f"{log.handshake.hex() or 'nothing'} {log.error}")
    rpc.comm_free(ctx.device)


@checks.check("10.1", "rank 0 takes as its peer only an address it admits and waits on for one", level=SHOULD,
              rule="comm.admit", needs=(C.COMM_INIT,), advisory=UNAUTHENTICATED)
def comm_admit(ctx: Context) -> None:
    rpc = ctx.client()
    host = rpc.address[0]
    stranger = other_loopback(host)
    if stranger is None:
        ctx.skip(f"the target is not on an IPv4 loopback address ({host}): the suite cannot connect from an "
                 "address it must not admit")
    port = rank0_port(rpc.address)

    def stranger_first(peer: LinkPeer, deadline: float):
        # From an address the target's default allow-list lacks: a careful rank 0 closes it
        # and waits on; then the suite connects from the address it did call from.
        peer.log.notes["stranger"] = _handshake_from(stranger, (host, port), deadline)
        return connect((host, port), peer, deadline)

    ok, log = _rank0_or_skip(ctx, rpc, port, stranger_first)
    try:
        require(log.notes.get("stranger") != "linked", f"a connection from {stranger} closed without a handshake",
                f"the target linked with {stranger}, which it was not told about")
        require(ok and log.peer, "ok=1 once the suite connected from its own address", f"ok={int(ok)} {log.error}")
    finally:
        rpc.comm_free(ctx.device)


def _handshake_from(source: str, address: tuple[str, int], deadline: float) -> str:
    """Connect to `address` from `source` and try the rank-1 handshake: "linked" when the
    target answered it, else what happened.  A connection aborted before the handshake (a
    listener left by an earlier COMM_INIT being replaced) is tried again until `deadline`."""
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((source, 0))
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(address)
            sock.settimeout(2.0)
            sock.sendall(bytes(24))
            return "linked" if len(sock.recv(24)) == 24 else "closed"
        except (ConnectionRefusedError, ConnectionAbortedError) as exc:
            if time.monotonic() >= deadline:
                return "nothing listened" if isinstance(exc, ConnectionRefusedError) else f"closed ({exc})"
            time.sleep(0.05)  # polling for a listener that starts when COMM_INIT arrives
        except OSError as exc:
            return f"closed ({exc})"
        finally:
            sock.close()


@checks.check("10.2", "COMM_ALLREDUCE on a tensor without a live buffer closes the connection",
              rule="comm.buffer", needs=(C.COMM_ALLREDUCE,))
def comm_buffer(ctx: Context) -> None:
    rpc = ctx.client()
    _linked_or_skip(ctx, rpc)  # the link the all-reduce below would use
    orphan = make_tensor(rpc.profile.tensor, id=0x51, type=0, ne=[16, 1, 1, 1], nb=[4, 64, 64, 64], buffer=0)
    rpc.comm_allreduce(orphan, ctx.device)
    try:
        rpc.device_count()
    except ServerClosed:
        return
    ctx.fail("expected: the server closes the connection (COMM_ALLREDUCE of a tensor without a buffer)\n"
             "actual:   it answered the next request")


@checks.check("10.3", "COMM_FREE without a link is no error, and a new COMM_INIT may follow one",
              rule="comm.free", needs=(C.COMM_FREE,))
def comm_free(ctx: Context) -> None:
    rpc = ctx.client()
    rpc.comm_free(ctx.device)
    require(rpc.device_count() >= 1, "the connection kept after COMM_FREE without a link", "closed")
    for attempt in ("first", "second"):
        peer = linked(rpc, ctx.attach, device=ctx.device, timeout=ctx.timeout)
        if peer is None:
            if attempt == "first":
                ctx.skip("the target declined to link with the suite (COMM_INIT answered ok=0)")
            ctx.fail("expected: a new link after COMM_FREE\nactual:   COMM_INIT answered ok=0")
        peer.finish()
        rpc.comm_free(ctx.device)


# -- COMM_ALLREDUCE over the link ---------------------------------------------------------------------


def partials(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The target's partial and the suite's: n float32 values, every 7th of the target's and
    every 5th of the suite's halfway between two BF16 values (ties, which ggml rounds to even)."""
    rng = np.random.default_rng(n)
    pair = []
    for every in (7, 5):
        bits = rng.standard_normal(n).astype(np.float32).view(np.uint32)
        bits[::every] = (bits[::every] & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
        pair.append(bits.view(np.float32))
    return pair[0], pair[1]


def _require_same(got: np.ndarray, want: np.ndarray, expected: str, what: str) -> None:
    """Fail naming the first element where `got` differs from `want`, bit for bit."""
    differ = got.view(np.uint32) != want.view(np.uint32)
    if differ.any():
        at = int(np.flatnonzero(differ)[0])
        require(False, expected, f"{what} {got[at]!r} instead of {want[at]!r} at element {at} "
                                 f"({int(differ.sum())} of {want.size} differ)")


def _allreduce_check(target_rank: int, n: int) -> None:
    fmt = "BF16" if wire_bf16(n) else "F32"

    def run(ctx: Context) -> None:
        rpc = ctx.client()
        ours, suites = partials(n)
        buf = new_buffer(rpc, ours.nbytes, ctx.device)
        tensor = rpc.tensor_for(buf, 0, ours, name="partial")
        rpc.set_tensor(tensor, ours)
        peer = linked(rpc, ctx.attach, [Exchange(encode_partial(suites).tobytes(), wire_size(n))],
                      target_rank=target_rank, device=ctx.device, timeout=ctx.timeout)
        if peer is None:
            ctx.skip(f"the target declined to link with the suite as rank {target_rank} (COMM_INIT answered ok=0)")
        rpc.comm_allreduce(tensor, ctx.device)
        got = rpc.read_array(tensor)
        log = peer.finish()
        require(len(log.received) == 1, f"the target's partial: {wire_size(n)} bytes on the link",
                log.error or "nothing")
        _require_same(decode_partial(log.received[0], n), decode_partial(encode_partial(ours).tobytes(), n),
                      f"the target's partial as {fmt}" + (" (ggml's rounding to nearest even)" if fmt == "BF16" else ""),
                      "sent")
        _require_same(got.reshape(-1), reduce(ours, decode_partial(encode_partial(suites).tobytes(), n)),
                      f"its own partial plus the suite's as the link carried it ({fmt})", "the sum")
        rpc.comm_free(ctx.device)

    checks.add(Check(f"link.allreduce.rank{target_rank}.{n}", "10.2",
                     f"COMM_ALLREDUCE of {n} F32 elements on rank {target_rank} sums with the peer's partial, which "
                     f"the link carries as {fmt}", run, needs=(C.COMM_ALLREDUCE,), rule="comm.wire"))


for _rank in (1, 0):
    for _n in (64, BF16_MIN_ELEMENTS - 1, BF16_MIN_ELEMENTS):
        _allreduce_check(_rank, _n)
