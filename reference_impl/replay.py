"""Replay the client side of a trace against any server, relocated, and judge the replies.

Server-chosen values differ between servers, so requests are relocated (protocol.relocate)
and replies are compared by kind: exactly where the protocol fixes the answer, structurally
where the server chooses (handles, base addresses), not at all where it describes the
machine (memory, alignment, max size), and within a tolerance for float data that a graph
computed (two correct backends round differently).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol import Command, message_spec
from protocol.errors import ProtocolError
from protocol.ggml import ELEMENT_DTYPES
from protocol.relocate import RelocationError, Relocator
from protocol.trace import Trace

from .client import RPCClient, ServerClosed

OK, TOLERATED, INFORMATIONAL, DIFFERS = "ok", "within tolerance", "informational", "differs"
FLOAT_TYPES = ("F32", "F16", "BF16")  # compared within a tolerance once a graph computed
TOLERANCE = 0.1  # of the largest value: two correct backends round differently
INFORMATIONAL_REPLIES = {Command.GET_DEVICE_MEMORY, Command.GET_ALIGNMENT, Command.GET_MAX_SIZE,
                         Command.DEVICE_COUNT, Command.SET_TENSOR_HASH}


@dataclass
class FrameResult:
    index: int
    command: str
    verdict: str
    detail: str = ""


def _tolerance_compare(recorded: bytes, got: bytes, type_name: str, tolerance: float) -> tuple[bool, str]:
    dtype = ELEMENT_DTYPES[type_name] if type_name in FLOAT_TYPES else None
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


def judge(command: Command, recorded, got, *, computed: bool, tensor_type: str | None, tolerance: float):
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
        if computed and tensor_type is not None:
            ok, detail = _tolerance_compare(a, b, tensor_type, tolerance)
            return (TOLERATED if ok else DIFFERS), detail
        n = min(len(a), len(b))
        differing = np.count_nonzero(np.frombuffer(a, np.uint8, n) != np.frombuffer(b, np.uint8, n))
        return DIFFERS, f"{differing} of {len(a)} bytes differ"
    if got.body == recorded.body:
        return OK, ""
    return DIFFERS, f"{dict(got.body)} (recorded {dict(recorded.body)})"


def replay(trace: Trace, endpoint: str, *, timeout: float = 60.0, tolerance: float = TOLERANCE) -> list[FrameResult]:
    """Replay `trace` against `endpoint`; one FrameResult per recorded request."""
    session = trace.decoded()
    if session.profile is None:
        raise ProtocolError(f"cannot decode the trace: {session.error}")
    profile = session.profile
    results: list[FrameResult] = []
    relocator = Relocator(profile)
    computed = False
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
            if request.command in (Command.GRAPH_COMPUTE, Command.GRAPH_RECOMPUTE):
                computed = True
            if not expects_reply:
                results.append(FrameResult(index, name, OK, "one-way"))
            elif recorded is None:
                results.append(FrameResult(index, name, DIFFERS, "the recording has no reply here (the server closed)"))
                break
            else:
                kind = profile.ggml.tensor_type(request.body.tensor.type) if request.command is Command.GET_TENSOR \
                    else None
                verdict, detail = judge(request.command, recorded, got, computed=computed,
                                        tensor_type=kind.name if kind is not None else None, tolerance=tolerance)
                results.append(FrameResult(index, name, verdict, detail))
                relocator.learn(request, recorded, got)
            relocator.forget(request)
    finally:
        rpc.close()
    return results


def passed(results: list[FrameResult]) -> bool:
    return all(r.verdict != DIFFERS for r in results)
