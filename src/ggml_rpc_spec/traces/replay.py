"""Replay the client side of a trace against any server, relocated, and judge the replies.

Server-chosen values differ between servers, so requests are relocated (protocol.relocate)
and replies are compared by kind: exactly where the protocol fixes the answer, structurally
where the server chooses (handles, base addresses), not at all where it describes the
machine (memory, alignment, max size).  Tensor data is compared exactly unless a graph of
the session wrote to it (the nodes' memory, as recorded); then floats are compared by the
measure upstream's op test program uses, the normalised mean squared error of the tensor
(sum of squared differences over the sum of squared recorded values), within a bound per
type: two correct backends round differently, but a systematic drift of 1% (NMSE 1e-4)
exceeds every bound.  A replay ends by checking that the server still accepts connections:
a trace that killed a server shows it.

A connection that set up a server-to-server link (8.0.0's COMM_INIT answered ok=1, SPEC §10)
replays only with the link's trace: the replayer is then the other rank, opening the link
where the target's COMM_INIT says, sending the other rank's partials as recorded, and
judging the target's partials against the recorded ones (within the tolerance: they are
computed).  A link trace is no client connection and is not replayed by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ggml_rpc_spec.protocol import Command, message_spec
from ggml_rpc_spec.protocol.comm import decode_partial, link_plans, rank_direction
from ggml_rpc_spec.protocol.errors import ProtocolError
from ggml_rpc_spec.protocol.ggml import ELEMENT_DTYPES, nbytes, nbytes_array
from ggml_rpc_spec.protocol.ops import CATALOGUE
from ggml_rpc_spec.protocol.relocate import RelocationError, Relocator
from ggml_rpc_spec.protocol.trace import LINK, Trace

from ggml_rpc_spec.client.linkpeer import Exchange as LinkExchange, LinkPeer, linked
from ggml_rpc_spec.client.rpc import RPCClient, ServerClosed

OK, TOLERATED, INFORMATIONAL, DIFFERS = "ok", "within tolerance", "informational", "differs"
# Largest NMSE of data a graph computed, per type of the data: what two correct backends may
# differ by.  The reference server replays the real servers' sessions at NMSE 4e-14 (its
# ggml numerics) and 3e-3 computing in plain float32 (activations not rounded as ggml's CPU
# rounds them, which SPEC §8.4 says a server should); F16 and BF16 results round once more.
TOLERANCE = {"F32": 1e-5, "F16": 2e-5, "BF16": 5e-5}
READS = (Command.GET_TENSOR, Command.GET_TENSOR_2D)  # replies that are tensor data
INFORMATIONAL_REPLIES = {Command.GET_DEVICE_MEMORY, Command.GET_ALIGNMENT, Command.GET_MAX_SIZE,
                         Command.DEVICE_COUNT, Command.SET_TENSOR_HASH}


@dataclass
class FrameResult:
    index: int
    command: str
    verdict: str
    detail: str = ""


def nmse(recorded: np.ndarray, got: np.ndarray) -> float:
    """sum((got - recorded)^2) / sum(recorded^2), as upstream's op test program measures a
    result (0 when both are all zero, infinite when only the recording is)."""
    a, b = recorded.astype(np.float64), got.astype(np.float64)
    error, scale = float(np.square(b - a).sum()), float(np.square(a).sum())
    return error / scale if scale else (0.0 if error == 0 else np.inf)


def _tolerance_compare(recorded: bytes, got: bytes, type_name: str, tolerance: float) -> tuple[bool, str]:
    dtype = ELEMENT_DTYPES[type_name] if type_name in TOLERANCE else None
    if dtype is None or len(recorded) % dtype.itemsize or len(got) != len(recorded):
        return False, "bytes differ"
    a, b = np.frombuffer(recorded, dtype), np.frombuffer(got, dtype)
    finite = np.isfinite(a)
    if not np.array_equal(finite, np.isfinite(b)):
        return False, "non-finite values differ"
    measured = nmse(a[finite], b[finite])
    return measured <= tolerance, f"NMSE {measured:.3g} ({'within' if measured <= tolerance else 'above'} {tolerance:g})"


def judge(command: Command, recorded, got, *, computed: bool, tensor_type: str | None, tolerance: dict):
    """(verdict, detail) for one reply."""
    if command is Command.ALLOC_BUFFER:
        if bool(recorded.body.remote_ptr) != bool(got.body.remote_ptr):
            return DIFFERS, f"remote_ptr {got.body.remote_ptr:#x}, recorded {recorded.body.remote_ptr:#x}"
        if got.body.remote_size < recorded.body.remote_size:
            return DIFFERS, f"remote_size {got.body.remote_size} < recorded {recorded.body.remote_size}"
        return OK, "handle relocated"
    if command is Command.BUFFER_GET_BASE:
        ok = got.body.base_ptr != 0 or recorded.body.base_ptr == 0
        return (OK, "base relocated") if ok else (DIFFERS, "base 0 for a non-empty buffer")
    if command in INFORMATIONAL_REPLIES:
        same = got.body == recorded.body
        return (OK if same else INFORMATIONAL), "" if same else f"{dict(got.body)} (recorded {dict(recorded.body)})"
    if command in READS:
        a, b = bytes(recorded.data), bytes(got.data)
        if a == b:
            return OK, f"{len(b)} bytes identical"
        if computed and tensor_type is not None and tensor_type in tolerance:
            ok, detail = _tolerance_compare(a, b, tensor_type, tolerance[tensor_type])
            return (TOLERATED if ok else DIFFERS), detail
        n = min(len(a), len(b))
        differing = np.count_nonzero(np.frombuffer(a, np.uint8, n) != np.frombuffer(b, np.uint8, n))
        return DIFFERS, f"{differing} of {len(a)} bytes differ"
    if got.body == recorded.body:
        return OK, ""
    return DIFFERS, f"{dict(got.body)} (recorded {dict(recorded.body)})"


def read_span(body) -> int:
    """Bytes from the read's offset to the end of its last byte: GET_TENSOR's size, or
    GET_TENSOR_2D's copies at their stride (8.0.0)."""
    if "n_copies" not in body:
        return body.size
    return (body.n_copies - 1) * body.stride + body.size if body.n_copies else 0


class Written:
    """The memory graphs of the session wrote, as recorded: (buffer, start, end) per node."""

    def __init__(self, profile) -> None:
        self.profile = profile
        self.regions: list[tuple[int, int, int]] = []

    def add(self, graph) -> None:
        t = graph.tensors
        ggml = self.profile.ggml
        rows = graph.node_rows[graph.node_rows >= 0]
        computes = np.array([op in CATALOGUE and CATALOGUE[op].computes for op in ggml.ops])
        ops = t["op"][rows]
        rows = rows[(ops < len(ggml.ops)) & computes[np.minimum(ops, len(ggml.ops) - 1)]
                    & (t["type"][rows] < ggml.type_count)]
        if ggml.compute_flag:
            rows = rows[(t["flags"][rows] & ggml.compute_flag) != 0]
        sizes = nbytes_array(self.profile.ggml, t["type"][rows], t["ne"][rows], t["nb"][rows])
        for handle, start, size in zip(t["buffer"][rows].tolist(), t["data"][rows].tolist(), sizes.tolist(),
                                       strict=True):
            if handle:
                self.regions.append((handle, start, start + size))

    def add_tensor(self, tensor) -> None:
        """A tensor computed in place outside a graph (an all-reduce's sum)."""
        kind = self.profile.ggml.tensor_type(tensor.type)
        if kind is not None:
            self.regions.append((tensor.buffer, tensor.data, tensor.data + nbytes(kind, tensor.ne, tensor.nb)))

    def overlaps(self, tensor, offset: int, size: int) -> bool:
        start = tensor.data + offset
        return any(handle == tensor.buffer and start < end and lo < start + size
                   for handle, lo, end in self.regions)


def link_of(trace: Trace, candidates: list[Trace]) -> Trace | None:
    """The link trace among `candidates` of the link `trace` set up (the one whose rank 0
    listened on the port its COMM_INIT named), or None."""
    links = [c for c in candidates if c.kind == LINK]
    ports = {plan.port for plan in link_plans(trace.decoded())} if links else set()
    return next((c for c in links if _port(c.header.get("peer")) in ports), None)


def _port(address) -> int | None:
    try:
        return int(str(address).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


class OtherRank:
    """The replayer as the other rank of the link a replayed connection sets up: the recorded
    partials of that rank go out, the target's come in and are judged against the recorded."""

    def __init__(self, link: Trace, timeout: float) -> None:
        self.link = link.link()
        self.timeout = timeout
        self.peer: LinkPeer | None = None
        self.target_rank = 0

    def init(self, rpc: RPCClient, request) -> bool:
        """Stand in for COMM_INIT: make the target the recorded rank, the replayer the other;
        whether the target answered ok."""
        self.target_rank = request.body.rank
        ours = rank_direction(1 - self.target_rank)
        exchanges = [LinkExchange(e.partials[ours], e.wire_size) for e in self.link.exchanges]
        self.peer = linked(rpc, lambda peer: peer, exchanges, target_rank=self.target_rank,
                           device=request.body.device, timeout=self.timeout)
        return self.peer is not None

    def result(self, index: int, tolerance: float) -> FrameResult:
        """The target's partials, once the link is done, against the recorded ones of its rank
        (computed floats: within `tolerance`, as F32 data a graph wrote)."""
        if self.peer is None:
            raise ValueError("no link was set up: COMM_INIT was not answered ok")
        log = self.peer.finish()
        theirs = rank_direction(self.target_rank)
        problems = [log.error] if log.error else []
        done = min(len(log.received), len(self.link.exchanges))
        if len(log.received) != len(self.link.exchanges):
            problems.append(f"{len(log.received)} of {len(self.link.exchanges)} partials received")
        for exchange, got in zip(self.link.exchanges[:done], log.received[:done], strict=True):
            want = exchange.partials[theirs]
            if want != got:
                ok, detail = _tolerance_compare(decode_partial(want, exchange.elements).tobytes(),
                                                decode_partial(got, exchange.elements).tobytes(), "F32", tolerance)
                problems += [] if ok else [f"all-reduce #{exchange.index}: {detail}"]
        if problems:
            return FrameResult(index, "(link)", DIFFERS, "; ".join(problems[:4]))
        return FrameResult(index, "(link)", OK, f"{len(log.received)} partials of rank {self.target_rank} as recorded "
                                                "(computed: within the F32 tolerance)")

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()


def replay(trace: Trace, endpoint: str, *, timeout: float = 60.0, tolerance: dict | None = None,
           link: Trace | None = None) -> list[FrameResult]:
    """Replay `trace` against `endpoint`; one FrameResult per recorded request, one for the
    link (`link`: the trace of the link the connection set up, if it set one up) and one
    for the server's health afterwards."""
    tolerance = TOLERANCE if tolerance is None else tolerance
    if trace.kind == LINK:
        raise ProtocolError("a link trace is replayed with the client connection that set the link up, not alone")
    session = trace.decoded()
    if session.profile is None:
        raise ProtocolError(f"cannot decode the trace: {session.error}")
    if link is None and link_plans(session):
        raise ProtocolError("the connection sets up a server-to-server link (COMM_INIT answered ok=1): replay it "
                            "with its link trace, whose partials the replayer sends as the other rank")
    profile = session.profile
    results: list[FrameResult] = []
    relocator = Relocator(profile)
    written = Written(profile)
    stored = {}  # uid (None before 8.0.0) -> the graph GRAPH_RECOMPUTE runs again
    other = OtherRank(link, timeout) if link is not None else None
    rpc = RPCClient(endpoint, proto=profile, timeout=timeout)
    try:
        for index, exchange in enumerate(session.exchanges, 1):
            request, recorded = exchange.request, exchange.reply
            name = request.command.name
            if request.command is Command.HELLO:
                reported = "%d.%d.%d" % rpc.server_version
                verdict = OK if rpc.server_version == profile.version else DIFFERS
                results.append(FrameResult(index, name, verdict, f"server reports {reported}"))
                continue
            if other is not None and request.command is Command.COMM_INIT and recorded is not None and recorded.body.ok:
                ok = other.init(rpc, request)
                results.append(FrameResult(index, name, OK if ok else DIFFERS, "linked to the replayer as rank "
                                           f"{1 - request.body.rank}" if ok else "ok=0: no link"))
                continue
            if request.command is Command.COMM_ALLREDUCE:
                written.add_tensor(request.body.tensor)
            try:
                moved = relocator.request(request)
            except RelocationError as exc:
                results.append(FrameResult(index, name, DIFFERS, f"cannot relocate: {exc}"))
                break
            expects_reply = message_spec(profile, request.command).has_reply
            try:
                got = rpc.call(moved.command, moved.body, data=moved.data, graph=moved.graph)
            except ServerClosed as exc:
                if expects_reply and recorded is None:
                    results.append(FrameResult(index, name, OK, "closed, as in the recording"))
                else:
                    results.append(FrameResult(index, name, DIFFERS, str(exc)))
                break
            uid = request.body.get("uid")
            if request.graph is not None:
                stored[uid] = request.graph
            if request.command in (Command.GRAPH_COMPUTE, Command.GRAPH_RECOMPUTE) and uid in stored:
                written.add(stored[uid])
            if not expects_reply:
                results.append(FrameResult(index, name, OK, "one-way"))
            elif recorded is None:
                results.append(FrameResult(index, name, DIFFERS, "the recording has no reply here (the server closed)"))
                break
            else:
                kind, computed = None, False
                if request.command in READS:
                    body = request.body
                    kind = profile.ggml.tensor_type(body.tensor.type)
                    computed = written.overlaps(body.tensor, body.offset, read_span(body))
                verdict, detail = judge(request.command, recorded, got, computed=computed,
                                        tensor_type=kind.name if kind is not None else None, tolerance=tolerance)
                results.append(FrameResult(index, name, verdict, detail))
                relocator.learn(request, recorded, got)
            relocator.forget(request)
        else:  # every request replayed: the target's side of the link is complete
            if other is not None and other.peer is not None:
                results.append(other.result(len(session.exchanges) + 1, tolerance["F32"]))
    finally:
        rpc.close()
        if other is not None:
            other.close()
    results.append(_still_serving(endpoint, profile, len(results) + 1))
    return results


def _still_serving(endpoint: str, profile, index: int, patience: float = 5.0) -> FrameResult:
    """Whether the server accepts a new connection after the replay (a serial server may
    still be closing the last one, so it is asked again for a few seconds)."""
    import time

    deadline = time.monotonic() + patience
    while True:
        try:
            RPCClient(endpoint, proto=profile, timeout=3.0).close()
            return FrameResult(index, "(server)", OK, "accepts new connections after the replay")
        except ConnectionRefusedError:
            break
        except (OSError, ProtocolError, ServerClosed, TimeoutError):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)  # polling the server until it answers or the patience runs out
    return FrameResult(index, "(server)", DIFFERS, "the server no longer accepts connections: it died during the "
                                                    "replay")


def passed(results: list[FrameResult]) -> bool:
    """Every frame as recorded, and at least the server's health judged."""
    return bool(results) and all(r.verdict != DIFFERS for r in results)
