"""Replay the client side of a trace against any server, relocated, and judge the replies.

Server-chosen values differ between servers, so requests are relocated (protocol.relocate)
and replies are compared by kind: exactly where the protocol fixes the answer, structurally
where the server chooses (handles, base addresses), not at all where it describes the
machine (memory, alignment, max size).  Tensor data is compared exactly unless a graph of
the session wrote to it (the nodes' memory, as recorded); then floats are compared within a
tolerance per type, relative to the largest value of that tensor (two correct backends
round differently).  A replay ends by checking that the server still accepts connections:
a trace that killed a server shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ggml_rpc_spec.protocol import Command, message_spec
from ggml_rpc_spec.protocol.errors import ProtocolError
from ggml_rpc_spec.protocol.ggml import ELEMENT_DTYPES, nbytes_array
from ggml_rpc_spec.protocol.ops import CATALOGUE
from ggml_rpc_spec.protocol.relocate import RelocationError, Relocator
from ggml_rpc_spec.protocol.trace import Trace

from ggml_rpc_spec.client.rpc import RPCClient, ServerClosed

OK, TOLERATED, INFORMATIONAL, DIFFERS = "ok", "within tolerance", "informational", "differs"
# Largest error in data a graph computed, relative to the tensor's largest value, per type:
# what two correct backends may differ by (ggml's CPU rounds activations to 8-bit blocks
# before quantized products, and F16/BF16 results round once more).
TOLERANCE = {"F32": 0.08, "F16": 0.08, "BF16": 0.1}  # the end-to-end bound of tests/test_llama_e2e.py
INFORMATIONAL_REPLIES = {Command.GET_DEVICE_MEMORY, Command.GET_ALIGNMENT, Command.GET_MAX_SIZE,
                         Command.DEVICE_COUNT, Command.SET_TENSOR_HASH}


@dataclass
class FrameResult:
    index: int
    command: str
    verdict: str
    detail: str = ""


def _tolerance_compare(recorded: bytes, got: bytes, type_name: str, tolerance: float) -> tuple[bool, str]:
    dtype = ELEMENT_DTYPES[type_name] if type_name in TOLERANCE else None
    if dtype is None or len(recorded) % dtype.itemsize:
        return False, "bytes differ"
    a = np.frombuffer(recorded, dtype).astype(np.float64)
    b = np.frombuffer(got, dtype).astype(np.float64)
    if not (np.isfinite(a) == np.isfinite(b)).all():
        return False, "non-finite values differ"
    finite = np.isfinite(a)
    scale = float(np.abs(a[finite]).max()) if finite.any() else 0.0
    error = float(np.abs(a[finite] - b[finite]).max()) if finite.any() else 0.0
    ok = error <= tolerance * max(scale, 1e-30)
    return ok, f"max |error| {error:.4g} = {error / max(scale, 1e-30):.2%} of the largest value {scale:.4g}"


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
    if command is Command.GET_TENSOR:
        a, b = bytes(recorded.data), bytes(got.data)
        if a == b:
            return OK, f"{len(b)} bytes identical"
        if computed and tensor_type in tolerance:
            ok, detail = _tolerance_compare(a, b, tensor_type, tolerance[tensor_type])
            return (TOLERATED if ok else DIFFERS), detail
        n = min(len(a), len(b))
        differing = np.count_nonzero(np.frombuffer(a, np.uint8, n) != np.frombuffer(b, np.uint8, n))
        return DIFFERS, f"{differing} of {len(a)} bytes differ"
    if got.body == recorded.body:
        return OK, ""
    return DIFFERS, f"{dict(got.body)} (recorded {dict(recorded.body)})"


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

    def overlaps(self, tensor, offset: int, size: int) -> bool:
        start = tensor.data + offset
        return any(handle == tensor.buffer and start < end and lo < start + size
                   for handle, lo, end in self.regions)


def replay(trace: Trace, endpoint: str, *, timeout: float = 60.0, tolerance: dict | None = None
           ) -> list[FrameResult]:
    """Replay `trace` against `endpoint`; one FrameResult per recorded request, and one for
    the server's health afterwards."""
    tolerance = TOLERANCE if tolerance is None else tolerance
    session = trace.decoded()
    if session.profile is None:
        raise ProtocolError(f"cannot decode the trace: {session.error}")
    profile = session.profile
    results: list[FrameResult] = []
    relocator = Relocator(profile)
    written = Written(profile)
    stored = None  # the graph GRAPH_RECOMPUTE runs again
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
            if request.graph is not None:
                stored = request.graph
            if request.command in (Command.GRAPH_COMPUTE, Command.GRAPH_RECOMPUTE) and stored is not None:
                written.add(stored)
            if not expects_reply:
                results.append(FrameResult(index, name, OK, "one-way"))
            elif recorded is None:
                results.append(FrameResult(index, name, DIFFERS, "the recording has no reply here (the server closed)"))
                break
            else:
                kind, computed = None, False
                if request.command is Command.GET_TENSOR:
                    body = request.body
                    kind = profile.ggml.tensor_type(body.tensor.type)
                    computed = written.overlaps(body.tensor, body.offset, body.size)
                verdict, detail = judge(request.command, recorded, got, computed=computed,
                                        tensor_type=kind.name if kind is not None else None, tolerance=tolerance)
                results.append(FrameResult(index, name, verdict, detail))
                relocator.learn(request, recorded, got)
            relocator.forget(request)
    finally:
        rpc.close()
    results.append(_still_serving(endpoint, profile, len(session.exchanges) + 1))
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
