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

from ggml_rpc_spec.executor import DequantCache, ExecContext, plan_graph
from ggml_rpc_spec.executor.device import Buffer, Device
from ggml_rpc_spec.executor.numerics import DEFAULT_NUMERICS, Numerics
from ggml_rpc_spec.protocol import Command, Request, message_spec
from ggml_rpc_spec.protocol.columns import SetTensor
from ggml_rpc_spec.protocol.comm import WORLD, host_of
from ggml_rpc_spec.protocol.errors import RemoteProtocolError
from ggml_rpc_spec.protocol.ggml import nbytes
from ggml_rpc_spec.protocol.hashing import cache_name, fnv1a64
from ggml_rpc_spec.protocol.messages import HASH_THRESHOLD, hello_reply, local_reply
from ggml_rpc_spec.protocol.rules import as_error, request_checks, sized_violation
from ggml_rpc_spec.protocol.versions import Profile

from .graphs import GraphStore, StoredGraph
from .link import Link, LinkError, LinkPolicy
from .view import ConnectionTables

log = logging.getLogger("ggml_rpc.server")


@dataclass
class ServerState:
    """What all connections share: the devices, the hash cache, the protocols spoken (one
    per HELLO shape; `profile` is the first, which answers connections before their HELLO)."""

    profiles: tuple[Profile, ...]
    devices: list[Device]
    cache_dir: Path | None = None
    verbose: bool = False
    numerics: Numerics = DEFAULT_NUMERICS
    weights: DequantCache = field(default_factory=DequantCache)
    links: LinkPolicy = field(default_factory=lambda: LinkPolicy.for_endpoint("127.0.0.1"))

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


class Session(ConnectionTables):
    """The protocol state of one connection (implements protocol.rules.ServerView, with
    ConnectionTables' lookups)."""

    def __init__(self, state: ServerState, name: str = "") -> None:
        self.state = state
        self.name = name
        self.buffers: dict[int, Buffer] = {}
        self.links: dict[int, Link] = {}  # device -> its link to the other rank of a pair (COMM_INIT)
        self.use_profile(state.profile)

    def use_profile(self, profile: Profile) -> None:
        """Speak `profile` on this connection (a server of several profiles learns which one
        from the client's HELLO, before anything else happens on the connection)."""
        self.profile = profile
        self.graphs = GraphStore(profile.graphs)
        self.exec_context = self.state.new_exec_context(profile)  # one per connection: plans hand steps on
        # Per command, looked up once: its rules and its handler (bound, so subclasses' overrides count).
        self._checks = {c: request_checks(c, message_spec(profile, c).request) for c in profile.commands}
        # bound through the instance, so that a subclass's override of a handler counts
        self._handlers = {c: getattr(self, HANDLERS[c].__name__) for c in profile.commands}

    # -- ServerView ---------------------------------------------------------------------------

    @property
    def n_devices(self) -> int:
        return len(self.state.devices)

    # -- validation ---------------------------------------------------------------------------

    def _nbytes(self, tensor) -> int:
        """ggml_nbytes of a request's rpc_tensor, whose type the tensor rules have checked."""
        kind = self.profile.ggml.tensor_type(tensor.type)
        if kind is None:
            raise RemoteProtocolError(f"protocol {self.profile.name} has no tensor type {tensor.type}",
                                      field="type", value=tensor.type)
        return nbytes(kind, tensor.ne, tensor.nb)

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

    def bulk_sink(self, command: Command, body, size: int) -> memoryview | None:
        """SET_TENSOR, SET_TENSOR_2D: validate the head, then let the data land in the tensor's
        memory where it is one run of bytes (copies of a 2-D write at a larger stride arrive in
        the parser's buffer and are scattered by the handler)."""
        self.check(command, body)
        self.check_sized(command, body, size)
        if command is Command.SET_TENSOR_2D and body.n_copies > 1 and body.stride != body.size:
            return None
        buf, view = self.region(body.tensor, body.offset, size)
        buf.touched()
        return view

    # -- dispatch -----------------------------------------------------------------------------

    def handle(self, request: Request):
        """Run one request; the reply body / data, or None.  Raises RemoteProtocolError or
        ExecutionError when the connection must close."""
        command = request.command
        resent = self._stored_copy(request) if request.graph is not None else None
        if command not in (Command.SET_TENSOR, Command.SET_TENSOR_2D):  # checked by bulk_sink
            self.check(command, request.body, None if resent else request.graph)  # a stored graph passed them
        if self.state.verbose:
            log.info("[%s] %s %s", self.name, command.name, describe(request))
        if resent is not None:
            resent.plan.run()
            return local_reply(Command.GRAPH_COMPUTE)
        return self._handlers[command](request)

    def hello(self, request):
        return hello_reply(self.profile)  # plain TCP: no RDMA, whatever caps the client sent

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
        self.graphs.discard_using(buf.handle)  # their nodes point into the freed memory (§8.3)
        buf.release()
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
        size = self._nbytes(src)
        _, source = self.region(src, 0, size)
        buf, target = self.region(dst, 0, size)
        np.copyto(np.frombuffer(target, np.uint8), np.frombuffer(source, np.uint8))  # overlap-safe
        buf.touched()
        return {"result": 1}

    def init_tensor(self, request):
        return {}  # a CPU device needs no per-tensor preparation

    def get_alloc_size(self, request):
        tensor = request.body.tensor
        return {"alloc_size": self._nbytes(tensor)}

    def memset_tensor(self, request):
        buf, view = self.region(request.body.tensor, request.body.offset, request.body.size)
        np.frombuffer(view, np.uint8).fill(request.body.value)
        buf.touched()
        return {}

    def _stored_copy(self, request) -> StoredGraph | None:
        """The device's last graph if this GRAPH_COMPUTE carries the very same graph.  Its
        verdict and plan still hold: the graph rules depend only on the graph and the buffers
        it names, and freeing any of those discards the stored graph."""
        device = request.body.get("device", 0)
        stored = self.graphs.last(device)
        if stored is None or stored.graph != request.graph:
            return None
        self.graphs.keep(device, request.body.get("uid"), stored)  # under the uid this request gives it
        return stored

    def graph_compute(self, request):
        device = request.body.get("device", 0)
        previous = self.graphs.last(device)
        plan = plan_graph(request.graph, self.buffers, self.profile, self.exec_context,
                          previous.plan if previous is not None else None)
        self.graphs.keep(device, request.body.get("uid"), StoredGraph(plan, request.graph))
        plan.run()
        return local_reply(Command.GRAPH_COMPUTE)  # 2.0.0 replies a status; later versions nothing

    def graph_recompute(self, request):
        stored = self.graphs.get(request.body.device, request.body.get("uid"))
        if stored is None:  # the request rules refuse GRAPH_RECOMPUTE without a stored graph
            raise RemoteProtocolError("no stored graph to recompute", command="GRAPH_RECOMPUTE", field="device",
                                      value=request.body.device)
        stored.plan.run()
        return None

    def set_tensor_2d(self, request):
        body = request.body
        if body.n_copies > 1 and body.stride != body.size:  # the data waited in the parser's buffer
            buf, target = self._copies_2d(body)
            np.copyto(target, np.frombuffer(request.data, np.uint8).reshape(body.n_copies, body.size))
            buf.touched()
        return None

    def get_tensor_2d(self, request):
        body = request.body
        if body.n_copies == 1 or body.stride == body.size:
            return self.region(body.tensor, body.offset, body.size * body.n_copies)[1]
        return np.ascontiguousarray(self._copies_2d(body)[1]).data.cast("B")

    def _copies_2d(self, body) -> tuple[Buffer, np.ndarray]:
        """The copies of a 2-D transfer as a (n_copies, size) view of the buffer's bytes."""
        buf = self.buffers[body.tensor.buffer]
        start = body.tensor.data + body.offset - buf.base
        return buf, np.lib.stride_tricks.as_strided(buf.memory[start:], shape=(body.n_copies, body.size),
                                                    strides=(body.stride, 1))

    def comm_init(self, request):
        body = request.body
        if body.device >= self.n_devices or body.world != WORLD or body.rank >= body.world:
            log.warning("[%s] COMM_INIT device=%d rank=%d world=%d: no such device or pair (§10.1 comm.ranks)",
                        self.name, body.device, body.rank, body.world)
            return {"ok": 0}
        if body.device in self.links:
            return {"ok": 1}  # as upstream: a device joins one pair per connection
        host = host_of(body.host)
        try:
            link = Link.open(self.state.links, body.rank, host, body.port)
        except LinkError as exc:
            log.warning("[%s] COMM_INIT device=%d rank=%d: %s", self.name, body.device, body.rank, exc)
            return {"ok": 0}
        self.links[body.device] = link
        log.info("[%s] device %d joined a pair as rank %d (peer %s)", self.name, body.device, body.rank, link.peer)
        return {"ok": 1}

    def comm_allreduce(self, request):
        tensor = request.body.tensor
        size = self._nbytes(tensor)
        if size == 0:
            return None
        buf, view = self.region(tensor, 0, size)
        values = np.frombuffer(view, np.float32)
        try:
            values[:] = self.links[request.body.device].all_reduce(values)
        except LinkError as exc:
            self.links.pop(request.body.device).close()
            raise RemoteProtocolError(str(exc), command="COMM_ALLREDUCE", section="10.2", key="comm.peer-agrees") from None
        buf.touched()
        return None

    def comm_free(self, request):
        link = self.links.pop(request.body.device, None)
        if link is not None:
            link.close()
        return None

    def close(self) -> None:
        """The connection ended: everything it owned is released."""
        self.graphs.clear()
        for link in self.links.values():
            link.close()
        self.links.clear()
        for buf in self.buffers.values():
            buf.release()
        self.buffers.clear()


# Which SET_TENSOR data a server with a cache directory stores (§9), per SET_TENSOR variant.
KEEP_IN_CACHE = {
    SetTensor.PLAIN: lambda body, size: size > HASH_THRESHOLD,
    SetTensor.CACHE_FLAG: lambda body, size: body.cache_flag != 0,
}

C = Command
# The handler of every command (checked against the command rows by a test).
HANDLERS = {
    C.ALLOC_BUFFER: Session.alloc_buffer, C.GET_ALIGNMENT: Session.get_alignment, C.GET_MAX_SIZE: Session.get_max_size,
    C.BUFFER_GET_BASE: Session.buffer_get_base, C.FREE_BUFFER: Session.free_buffer,
    C.BUFFER_CLEAR: Session.buffer_clear, C.SET_TENSOR: Session.set_tensor, C.SET_TENSOR_HASH: Session.set_tensor_hash,
    C.GET_TENSOR: Session.get_tensor, C.COPY_TENSOR: Session.copy_tensor, C.GRAPH_COMPUTE: Session.graph_compute,
    C.GET_DEVICE_MEMORY: Session.get_device_memory, C.INIT_TENSOR: Session.init_tensor,
    C.GET_ALLOC_SIZE: Session.get_alloc_size, C.HELLO: Session.hello, C.DEVICE_COUNT: Session.device_count,
    C.GRAPH_RECOMPUTE: Session.graph_recompute, C.MEMSET_TENSOR: Session.memset_tensor,
    C.SET_TENSOR_2D: Session.set_tensor_2d, C.GET_TENSOR_2D: Session.get_tensor_2d, C.COMM_INIT: Session.comm_init,
    C.COMM_ALLREDUCE: Session.comm_allreduce, C.COMM_FREE: Session.comm_free,
}


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
