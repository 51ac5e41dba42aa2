"""One connection's state and the handler of every command.

A Session owns the buffers allocated on its connection and the graphs stored for
GRAPH_RECOMPUTE; both die with it.  Every request is checked against protocol.rules before
any memory is touched; a broken rule raises RemoteProtocolError, and the I/O shell closes
the connection.  Handlers return the reply body (or reply data), and the shell sends it
only if the protocol version gives the command a reply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from construct import Container

from ggml_rpc_spec.executor import DequantCache, ExecContext, GraphPlan, plan_graph
from ggml_rpc_spec.executor.device import Buffer, Device
from ggml_rpc_spec.protocol import Command, Graph, Request, message_spec
from ggml_rpc_spec.protocol.ggml import nbytes
from ggml_rpc_spec.protocol.hashing import cache_name, fnv1a64
from ggml_rpc_spec.protocol.messages import CONN_CAPS_SIZE, HASH_THRESHOLD
from ggml_rpc_spec.protocol.rules import (
    BufferInfo,
    as_error,
    request_checks,
    sized_violation,
)
from ggml_rpc_spec.protocol.versions import Profile

log = logging.getLogger("ggml_rpc.server")


@dataclass
class ServerState:
    """What all connections share: the devices, the hash cache, the protocols spoken (one
    per HELLO shape; `profile` is the first, which answers connections before their HELLO)."""

    profiles: tuple[Profile, ...]
    devices: list[Device]
    cache_dir: Path | None = None
    verbose: bool = False
    numerics: str = "float"
    weights: DequantCache = field(default_factory=DequantCache)

    @property
    def profile(self) -> Profile:
        return self.profiles[0]

    def new_exec_context(self, profile: Profile) -> ExecContext:
        return ExecContext(profile.ggml, self.weights, self.numerics)

    def cached_size(self, value: int) -> int | None:
        """The size of the cache entry named by hash `value`, or None when there is none."""
        if self.cache_dir is None:
            return None
        try:
            return (self.cache_dir / cache_name(value)).stat().st_size
        except OSError:
            return None

    def cached(self, value: int) -> bytes | None:
        """The cached data named by hash `value`, or None when there is none or its bytes no
        longer hash to its name (a truncated or damaged file is a miss, never a wrong hit)."""
        if self.cache_dir is None:
            return None
        path = self.cache_dir / cache_name(value)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if fnv1a64(data) != value:
            log.warning("cache entry %s does not match its hash (%d bytes): ignored", path, len(data))
            return None
        return data

    def store(self, data) -> None:
        if self.cache_dir is None:
            return
        path = self.cache_dir / cache_name(fnv1a64(data))
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)  # readers never see a half-written entry
        log.info("cached %d bytes as %s", len(data), path)


@dataclass
class StoredGraph:
    """The last graph computed on a device: GRAPH_RECOMPUTE runs its plan again, and so does
    a GRAPH_COMPUTE carrying the same bytes (clients before 7.0 resend the unchanged graph
    for every decoded token).  FREE_BUFFER of any buffer the plan reaches discards it."""

    plan: GraphPlan
    graph: Graph


class Session:
    """The protocol state of one connection (implements protocol.rules.ServerView)."""

    def __init__(self, state: ServerState, name: str = "") -> None:
        self.state = state
        self.name = name
        self.buffers: dict[int, Buffer] = {}
        self.graphs: dict[int, StoredGraph] = {}
        self.use_profile(state.profile)

    def use_profile(self, profile: Profile) -> None:
        """Speak `profile` on this connection (a server of several profiles learns which one
        from the client's HELLO, before anything else happens on the connection)."""
        self.profile = profile
        self.exec_context = self.state.new_exec_context(profile)  # one per connection: plans hand steps on
        # Per command, looked up once: its rules and its handler (bound, so subclasses' overrides count).
        self._checks = {c: request_checks(c, message_spec(profile, c).request) for c in profile.commands}
        self._handlers = {c: getattr(self, c.name.lower()) for c in profile.commands}  # the method of its name

    # -- ServerView ---------------------------------------------------------------------------

    @property
    def n_devices(self) -> int:
        return len(self.state.devices)

    def buffer(self, handle: int) -> BufferInfo | None:
        found = self.buffers.get(handle)
        return found.info if found is not None else None

    def has_stored_graph(self, device: int) -> bool:
        return device in self.graphs

    # -- validation ---------------------------------------------------------------------------

    def check(self, command: Command, body, graph=None) -> None:
        broken = self._checks[command].first_violation(self, body, graph)
        if broken is not None:
            raise as_error(command, broken)

    def check_sized(self, command: Command, body, size: int) -> None:
        broken = sized_violation(self, command, body, size)
        if broken is not None:
            raise as_error(command, broken)

    def region(self, tensor, offset: int, size: int) -> tuple[Buffer, memoryview]:
        buf = self.buffers[tensor.buffer]
        return buf, buf.view(tensor.data + offset, size)

    def bulk_sink(self, command: Command, body, size: int) -> memoryview:
        """SET_TENSOR: validate the head, then let the data land in the tensor's memory."""
        self.check(command, body)
        self.check_sized(command, body, size)
        buf, view = self.region(body.tensor, body.offset, size)
        buf.touched()
        return view

    # -- dispatch -----------------------------------------------------------------------------

    def handle(self, request: Request):
        """Run one request; the reply body / data, or None.  Raises RemoteProtocolError or
        ExecutionError when the connection must close."""
        command = request.command
        resent = self._stored_copy(request) if request.graph is not None else None
        if command is not Command.SET_TENSOR:  # SET_TENSOR was checked by bulk_sink
            self.check(command, request.body, None if resent else request.graph)  # a stored graph passed them
        if self.state.verbose:
            log.info("[%s] %s %s", self.name, command.name, describe(request))
        if resent is not None:
            resent.plan.run()
            return GRAPH_COMPUTE_REPLY
        return self._handlers[command](request)

    def hello(self, request):
        major, minor, patch = self.profile.version
        reply = {"major": major, "minor": minor, "patch": patch}
        if self.profile.hello == "caps":
            reply.update(padding=0, conn_caps=bytes(CONN_CAPS_SIZE))  # plain TCP: no RDMA
        return reply

    def device_count(self, request):
        return {"device_count": self.n_devices}

    def _device(self, body) -> Device:
        return self.state.devices[body.get("device", 0)]

    def alloc_buffer(self, request):
        buf = self._device(request.body).allocate(request.body.size)
        if buf is None:
            log.info("[%s] ALLOC_BUFFER of %d bytes refused: device has %d free", self.name, request.body.size,
                     self._device(request.body).free)
            return {"remote_ptr": 0, "remote_size": 0}
        self.buffers[buf.handle] = buf
        return {"remote_ptr": buf.handle, "remote_size": buf.size}

    def get_alignment(self, request):
        return {"alignment": self._device(request.body).alignment}

    def get_max_size(self, request):
        return {"max_size": self._device(request.body).max_size}

    def get_device_memory(self, request):
        device = self._device(request.body)
        return {"free_mem": device.free, "total_mem": device.total}

    def buffer_get_base(self, request):
        return {"base_ptr": self.buffers[request.body.remote_ptr].base}

    def free_buffer(self, request):
        buf = self.buffers.pop(request.body.remote_ptr)
        for device in [d for d, g in self.graphs.items() if buf.handle in g.plan.handles]:
            del self.graphs[device]  # its nodes point into the freed memory (§8.3)
        buf.device.release(buf)
        return {}

    def buffer_clear(self, request):
        buf = self.buffers[request.body.remote_ptr]
        buf.memory.fill(request.body.value)
        buf.touched()
        return {}

    def set_tensor(self, request):
        if KEEP_IN_CACHE[self.profile.set_tensor](request.body, len(request.data)):
            self.state.store(request.data)
        return None

    def set_tensor_hash(self, request):
        size = self.state.cached_size(request.body.hash)
        if size is None:
            return {"result": 0}
        self.check_sized(Command.SET_TENSOR_HASH, request.body, size)  # before reading a byte of the file
        data = self.state.cached(request.body.hash)
        if data is None or len(data) != size:
            return {"result": 0}
        buf, view = self.region(request.body.tensor, request.body.offset, size)
        view[:] = data
        buf.touched()
        return {"result": 1}

    def get_tensor(self, request):
        _, view = self.region(request.body.tensor, request.body.offset, request.body.size)
        return view

    def copy_tensor(self, request):
        src, dst = request.body.src, request.body.dst
        size = nbytes(self.profile.ggml.tensor_type(src.type), src.ne, src.nb)
        _, source = self.region(src, 0, size)
        buf, target = self.region(dst, 0, size)
        np.copyto(np.frombuffer(target, np.uint8), np.frombuffer(source, np.uint8))  # overlap-safe
        buf.touched()
        return {"result": 1}

    def init_tensor(self, request):
        return {}  # a CPU device needs no per-tensor preparation

    def get_alloc_size(self, request):
        tensor = request.body.tensor
        return {"alloc_size": nbytes(self.profile.ggml.tensor_type(tensor.type), tensor.ne, tensor.nb)}

    def memset_tensor(self, request):
        buf, view = self.region(request.body.tensor, request.body.offset, request.body.size)
        np.frombuffer(view, np.uint8).fill(request.body.value)
        buf.touched()
        return {}

    def _stored_copy(self, request) -> StoredGraph | None:
        """The device's stored graph if this GRAPH_COMPUTE carries the very same graph.  Its
        verdict and plan still hold: the graph rules depend only on the graph and the buffers
        it names, and freeing any of those discards the stored graph."""
        stored = self.graphs.get(request.body.get("device", 0))
        return stored if stored is not None and stored.graph == request.graph else None

    def graph_compute(self, request):
        device = request.body.get("device", 0)
        previous = self.graphs.pop(device, None)
        plan = plan_graph(request.graph, self.buffers, self.profile, self.exec_context,
                          previous.plan if previous is not None else None)
        self.graphs[device] = StoredGraph(plan, request.graph)
        plan.run()
        return GRAPH_COMPUTE_REPLY

    def graph_recompute(self, request):
        self.graphs[request.body.device].plan.run()
        return None

    def close(self) -> None:
        """The connection ended: everything it owned is released."""
        self.graphs.clear()
        for buf in self.buffers.values():
            buf.device.release(buf)
        self.buffers.clear()


# Which SET_TENSOR data a server with a cache directory stores (§9), per SET_TENSOR variant.
KEEP_IN_CACHE = {
    "plain": lambda body, size: size > HASH_THRESHOLD,
    "cache_flag": lambda body, size: body.cache_flag != 0,
}

GRAPH_COMPUTE_REPLY = {"result": 0}  # 2.0.0 replies a ggml_status; later versions send nothing


def describe(request: Request) -> str:
    """One log line's worth of a request, like GGML_RPC_DEBUG."""
    if request.graph is not None:
        return f"device={request.body.get('device', 0)} n_nodes={request.graph.n_nodes} n_tensors={request.graph.n_tensors}"
    parts = []
    for key, value in request.body.items():
        if key.startswith("_"):
            continue
        if isinstance(value, Container) and "data" in value:
            parts.append(f"{key}=(buffer=0x{value.buffer:x} data=0x{value.data:x} type={value.type})")
        elif isinstance(value, int):
            parts.append(f"{key}={value:#x}" if key in ("remote_ptr", "hash") else f"{key}={value}")
    if request.data is not None:
        parts.append(f"bytes={len(request.data)}")
    return " ".join(parts)
