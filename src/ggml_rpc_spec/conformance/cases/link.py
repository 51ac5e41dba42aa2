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

import numpy as np

from ggml_rpc_spec.protocol import Command
from ggml_rpc_spec.protocol.comm import (
    BF16_MIN_ELEMENTS,
    WORLD,
    decode_partial,
    encode_partial,
    reduce,
    wire_bf16,
    wire_size,
)

from ..core import Check, Checks, Context, SHOULD, require
from ..linkpeer import Exchange, LinkPeer, accepting, connect, linked, listener, other_loopback, rank0_port

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
        ok = rpc.comm_init(port=port, **fields)
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

    peer = ctx.attach(LinkPeer(1, connect_then_try_the_stranger, timeout=ctx.timeout)).start()
    ok = rpc.comm_init(rank=0, port=port, device=ctx.device)
    log = peer.finish()
    if not ok and not log.peer:
        ctx.skip(f"the target declined to listen as rank 0 (COMM_INIT answered ok=0): {log.error}")
    require(ok and log.peer, f"ok=1 once the suite connected to {host}:{port}",
            f"ok={int(ok)}, link {log.peer or 'not made'} {log.error}")
    require(log.notes.get("stranger") != "accepted", f"{stranger}:{port} refused while the target listened on "
            f"{host}:{port}", f"{stranger}:{port} accepted a connection: the target listens on every interface")
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
        buf = rpc.alloc_buffer(ours.nbytes, ctx.device)
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
                     f"the link carries as {fmt}", run, needs=(C.COMM_ALLREDUCE,)))


for _rank in (1, 0):
    for _n in (64, BF16_MIN_ELEMENTS - 1, BF16_MIN_ELEMENTS):
        _allreduce_check(_rank, _n)
