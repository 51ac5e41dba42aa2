"""Validation rules as data: one entry per rule, cited by its SPEC.md section.

Three consumers read this table: the reference server enforces the checks (and logs the
rule when a request breaks one), tools/generate_spec.py prints every rule into its SPEC.md
section, and the conformance suite turns every rule into a negative case.  A broken rule
always means the same thing for a server: close that connection, keep serving the others.

Checks are pure functions over a `ServerView` (what the server knows: its devices, the live
buffers of this connection, its stored graphs) and return a `Violation` or None.  Rules
enforced elsewhere (the framing parser, the graph executor) have no check here but are
listed so that the spec and the suite know them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Literal, Protocol

import numpy as np

from .commands import Command
from .ggml import elements_overflow, nbytes, nbytes_array
from .graph import distinct
from .versions import Profile

MUST: Literal["MUST"] = "MUST"
SHOULD: Literal["SHOULD"] = "SHOULD"


@dataclass(frozen=True)
class BufferInfo:
    base: int
    size: int

    @property
    def end(self) -> int:
        return self.base + self.size


class ServerView(Protocol):
    """What a rule may consult: the server's state as seen by one connection."""

    @property
    def profile(self) -> Profile: ...

    @property
    def n_devices(self) -> int: ...

    def buffer(self, handle: int) -> BufferInfo | None:
        """The live buffer of this connection with that handle (remote_ptr), or None."""

    def has_stored_graph(self, device: int, uid: int | None) -> bool:
        """Whether GRAPH_RECOMPUTE may run the graph of `device` (and `uid`, where graphs are
        cached by uid; None: the device's last graph)."""

    def has_link(self, device: int) -> bool:
        """Whether COMM_INIT set up a server-to-server link for `device` on this connection."""


@dataclass(frozen=True)
class Violation:
    field: str
    value: object
    detail: str = ""


Scope = Literal["request", "sized", "tensor", "graph", "framing", "behaviour", "execution"]
Level = Literal["MUST", "SHOULD"]


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One rule.  `scope` says what `check` receives:
    "request" -- check(view, body) for the commands in `commands`;
    "sized"   -- check(view, body, size) once the data size is known: SET_TENSOR's data
                 (before any data byte is accepted), SET_TENSOR_HASH's cached file (on a hit);
    "tensor"  -- check(view, tensor) for every rpc_tensor field of those commands;
    "graph"   -- check(view, graph, valid) over the decoded arrays of GRAPH_COMPUTE;
    "framing", "behaviour", "execution" -- enforced by the parser, the command handlers or
    the graph executor; `check` is None.
    """

    section: str
    key: str
    title: str
    level: Level
    scope: Scope
    commands: tuple[Command, ...]
    check: Callable | None = None
    advisory: str = ""
    serves: bool = False  # the rule obliges the server to serve what it describes (not to close)
    stricter: str = ""  # where the rule is stricter than the upstream server: what upstream does instead

    @property
    def case_id(self) -> str:
        return f"§{self.section} {self.title}"

    def applies_to(self, command: Command) -> bool:
        return command in self.commands

    def run(self, *args) -> Violation | None:
        """`check` applied to a request's parts (rules of the checked scopes always have one)."""
        if self.check is None:
            raise TypeError(f"rule {self.key} of scope {self.scope!r} has no check to run")
        return self.check(*args)


# -- helpers used by the checks -----------------------------------------------------------------


def _region(view: ServerView, tensor, offset: int, size: int, what: str) -> Violation | None:
    """[data+offset, data+offset+size) must start inside the tensor's buffer and fit in it."""
    buf = view.buffer(tensor.buffer)
    if buf is None:
        return Violation("tensor.buffer", tensor.buffer, "not a live buffer of this connection")
    start = tensor.data + offset
    if not buf.base <= start < buf.end or size > buf.end - start:
        return Violation(what, size, f"region [0x{start:x}, +{size}) is outside buffer "
                                     f"[0x{buf.base:x}, 0x{buf.end:x})")
    return None


def _device(view: ServerView, body) -> Violation | None:
    device = body.get("device")
    if device is not None and device >= view.n_devices:
        return Violation("device", device, f"the server has {view.n_devices} device(s)")
    return None


def _live_handle(view: ServerView, body) -> Violation | None:
    if view.buffer(body.remote_ptr) is None:
        return Violation("remote_ptr", body.remote_ptr, "not a buffer allocated on this connection")
    return None


def _tensor_type(view: ServerView, tensor) -> Violation | None:
    if view.profile.ggml.tensor_type(tensor.type) is None:
        return Violation("type", tensor.type, f"protocol {view.profile.name} knows types "
                                              f"0..{view.profile.ggml.type_count - 1} minus removed ones")
    return None


def _tensor_blocks(view: ServerView, tensor) -> Violation | None:
    kind = view.profile.ggml.tensor_type(tensor.type)
    if kind is not None and tensor.ne[0] % kind.block_size:
        return Violation("ne[0]", tensor.ne[0], f"{kind.name} has blocks of {kind.block_size}")
    return None


def _tensor_elements(view: ServerView, tensor) -> Violation | None:
    if elements_overflow([tensor.ne])[0]:
        return Violation("ne", list(tensor.ne), "its dimensions above 1 multiply past INT64_MAX elements")
    return None


def _tensor_bounds(view: ServerView, tensor) -> Violation | None:
    buf = view.buffer(tensor.buffer) if tensor.buffer else None
    kind = view.profile.ggml.tensor_type(tensor.type)
    if buf is None or kind is None:
        return None
    size = nbytes(kind, tensor.ne, tensor.nb)
    if not buf.base <= tensor.data <= buf.end or size > buf.end - tensor.data:
        return Violation("data", tensor.data, f"the tensor's {size} bytes do not fit in buffer "
                                              f"[0x{buf.base:x}, 0x{buf.end:x})")
    return None


def _needs_buffer(field: str):
    def check(view: ServerView, body) -> Violation | None:
        tensor = body[field]
        if not tensor.buffer or view.buffer(tensor.buffer) is None:
            return Violation(f"{field}.buffer", tensor.buffer, "a live buffer of this connection is required")
        return None

    return check


def _sized_buffer(view: ServerView, body, size: int) -> Violation | None:
    return _needs_buffer("tensor")(view, body)


def _sized_region(view: ServerView, body, size: int) -> Violation | None:
    return _region(view, body.tensor, body.offset, size, "data size")


def _in_tensor(view: ServerView, tensor, offset: int, size: int, what: str) -> Violation | None:
    """[offset, offset+size) must lie inside the tensor's nbytes (ggml_backend_tensor_set/get
    assert it; upstream servers abort)."""
    kind = view.profile.ggml.tensor_type(tensor.type)
    if kind is None:
        return None
    total = nbytes(kind, tensor.ne, tensor.nb)
    if offset > total or size > total - offset:
        return Violation(what, size, f"[offset {offset}, +{size}) runs past the tensor's {total} bytes")
    return None


def _sized_in_tensor(view: ServerView, body, size: int) -> Violation | None:
    return _in_tensor(view, body.tensor, body.offset, size, "data size")


def _get_in_tensor(view: ServerView, body) -> Violation | None:
    return _in_tensor(view, body.tensor, body.offset, body.size, "size")


def _copy_buffers(view: ServerView, body) -> Violation | None:
    return _needs_buffer("src")(view, body) or _needs_buffer("dst")(view, body)


def _get_tensor_region(view: ServerView, body) -> Violation | None:
    return _region(view, body.tensor, body.offset, body.size, "size")


def _copy_fits(view: ServerView, body) -> Violation | None:
    kind = view.profile.ggml.tensor_type(body.src.type)
    dst = view.buffer(body.dst.buffer)
    if kind is None or dst is None:
        return None
    size = nbytes(kind, body.src.ne, body.src.nb)
    if not dst.base <= body.dst.data <= dst.end or size > dst.end - body.dst.data:
        return Violation("src", size, f"nbytes(src)={size} does not fit after dst.data=0x{body.dst.data:x} "
                                      f"in buffer [0x{dst.base:x}, 0x{dst.end:x})")
    return None


def _memset_region(view: ServerView, body) -> Violation | None:
    kind = view.profile.ggml.tensor_type(body.tensor.type)
    if kind is None:
        return None
    size = nbytes(kind, body.tensor.ne, body.tensor.nb)
    if body.offset > size or body.size > size - body.offset:
        return Violation("size", body.size, f"[offset {body.offset}, +{body.size}) exceeds the tensor's {size} bytes")
    return _region(view, body.tensor, body.offset, body.size, "size")


def _recompute_stored(view: ServerView, body) -> Violation | None:
    uid = body.get("uid")
    if body.device < view.n_devices and not view.has_stored_graph(body.device, uid):
        if uid is None:
            return Violation("device", body.device, "no graph is stored for this device on this connection")
        return Violation("uid", uid, f"no graph with this uid is cached for device {body.device} on this connection")
    return None


# -- 2-D transfers (SET_TENSOR_2D, GET_TENSOR_2D) -------------------------------------------------


def span_2d(body) -> int:
    """Bytes from the first copy's start to the last copy's end, in the tensor."""
    return (body.n_copies - 1) * body.stride + body.size


def _copies(view: ServerView, body) -> Violation | None:
    if body.n_copies == 0 or body.size == 0:
        field = "n_copies" if body.n_copies == 0 else "size"
        return Violation(field, body[field], "a 2-D transfer moves at least one copy of at least one byte")
    if body.size * body.n_copies >= 1 << 64:
        return Violation("n_copies", body.n_copies, f"size {body.size} times n_copies overflows 64 bits")
    return None


def _no_overlap(view: ServerView, body) -> Violation | None:
    if body.n_copies > 1 and body.stride < body.size:
        return Violation("stride", body.stride, f"copies of {body.size} bytes {body.stride} bytes apart overlap")
    return None


def _region_2d(view: ServerView, body) -> Violation | None:
    return _region(view, body.tensor, body.offset, span_2d(body), "stride")


def _in_tensor_2d(view: ServerView, body) -> Violation | None:
    return _in_tensor(view, body.tensor, body.offset, span_2d(body), "stride")


# -- the server-to-server link (COMM_*) -------------------------------------------------------------


def _linked(view: ServerView, body) -> Violation | None:
    if body.device < view.n_devices and not view.has_link(body.device):
        return Violation("device", body.device, "no COMM_INIT set up a link for this device on this connection")
    return None


def _reduce_f32(view: ServerView, body) -> Violation | None:
    tensor = body.tensor
    kind = view.profile.ggml.tensor_type(tensor.type)
    if kind is None or kind.name != "F32":
        return Violation("tensor.type", tensor.type, "the link sums F32 tensors only")
    expected = [kind.type_size]
    for dim in range(1, 4):
        expected.append(expected[-1] * tensor.ne[dim - 1])
    if any(tensor.ne[d] > 1 and tensor.nb[d] != expected[d] for d in range(4)):
        return Violation("tensor.nb", list(tensor.nb), "the link sums contiguous tensors only")
    return None


# -- graph checks (vectorised over the decoded arrays) --------------------------------------


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def _graph_node_nonzero(view, graph, _valid) -> Violation | None:
    at = _first(graph.nodes == 0)
    return None if at is None else Violation(f"nodes[{at}]", 0, "node id 0 names no tensor")


def _graph_ids_unique(view, graph, _valid) -> Violation | None:
    ids = graph.tensors["id"]
    unique, counts = np.unique(ids, return_counts=True)
    dup = _first(counts > 1)
    if dup is not None:
        return Violation("tensors.id", int(unique[dup]), "appears more than once")
    zero = _first(ids == 0)
    return None if zero is None else Violation(f"tensors[{zero}].id", 0, "id 0 is reserved for 'no tensor'")


def _graph_ids_known(view, graph, _valid) -> Violation | None:
    at = _first((graph.nodes != 0) & (graph.node_rows < 0))
    if at is not None:
        return Violation(f"nodes[{at}]", int(graph.nodes[at]), "no tensor with this id in the graph")
    for field, columns in (("src", slice(0, -1)), ("view_src", -1)):
        links = graph.tensors[field]
        bad = (links != 0) & (graph.link_rows[:, columns] < 0)
        if bad.any():
            index = np.argwhere(bad)[0]
            tensor = int(index[0])
            name = f"tensors[{tensor}].{field}" + (f"[{int(index[1])}]" if links.ndim > 1 else "")
            return Violation(name, int(links[tuple(index)]), "no tensor with this id in the graph")
    return None


def _graph_acyclic(view, graph, _valid) -> Violation | None:
    order = topological_order(graph)
    if order is None:
        return Violation("tensors", len(graph.tensors), "src/view_src links form a cycle")
    return None


def _graph_types(view, graph, valid) -> Violation | None:
    at = _first(~valid["type"])
    if at is None:
        return None
    return Violation(f"tensors[{at}].type", int(graph.tensors["type"][at]), "not a valid type of this version")


def _graph_blocks(view, graph, valid) -> Violation | None:
    blocks = view.profile.ggml.block_sizes[np.where(valid["type"], graph.tensors["type"], 0)]
    bad = valid["type"] & (blocks > 1) & (graph.tensors["ne"][:, 0] % np.maximum(blocks, 1) != 0)
    at = _first(bad)
    if at is None:
        return None
    return Violation(f"tensors[{at}].ne[0]", int(graph.tensors["ne"][at, 0]), "not a multiple of the block size")


def _graph_null_data(view, graph, _valid) -> Violation | None:
    if view.profile.host_data == "address":  # the client's own address: ignored, never dereferenced
        return None
    at = _first((graph.tensors["buffer"] == 0) & (graph.tensors["data"] != 0))
    if at is None:
        return None
    return Violation(f"tensors[{at}].data", int(graph.tensors["data"][at]), "data set on a tensor without a buffer")


def _graph_buffers(view, graph, _valid) -> Violation | None:
    for handle in distinct(graph.tensors["buffer"]):
        if handle and view.buffer(int(handle)) is None:
            at = _first(graph.tensors["buffer"] == handle)
            return Violation(f"tensors[{at}].buffer", int(handle), "not a buffer allocated on this connection")
    return None


def _graph_elements(view, graph, _valid) -> Violation | None:
    at = _first(elements_overflow(graph.tensors["ne"]))
    if at is None:
        return None
    return Violation(f"tensors[{at}].ne", [int(n) for n in graph.tensors["ne"][at]],
                     "its dimensions above 1 multiply past INT64_MAX elements")


def _graph_bounds(view, graph, valid) -> Violation | None:
    tensors = graph.tensors
    types = np.where(valid["type"], tensors["type"], 0)
    sizes = nbytes_array(view.profile.ggml, types, tensors["ne"], tensors["nb"])
    data = tensors["data"]
    for handle in distinct(tensors["buffer"]):
        buf = view.buffer(int(handle)) if handle else None
        if buf is None:
            continue
        rows = tensors["buffer"] == handle
        start_ok = (data >= np.uint64(buf.base)) & (data <= np.uint64(buf.end))
        room = np.where(start_ok, np.uint64(buf.end) - np.where(start_ok, data, np.uint64(buf.end)), 0)
        bad = rows & valid["type"] & (~start_ok | (sizes > room))
        at = _first(bad)
        if at is not None:
            return Violation(f"tensors[{at}].data", int(data[at]),
                             f"its {int(sizes[at])} bytes do not fit in buffer [0x{buf.base:x}, 0x{buf.end:x})")
    return None


def _graph_ops_known(view, graph, _valid) -> Violation | None:
    at = _first(graph.tensors["op"] >= len(view.profile.ggml.ops))
    if at is None:
        return None
    return Violation(f"tensors[{at}].op", int(graph.tensors["op"][at]),
                     f"ggml {view.profile.ggml.release} has {len(view.profile.ggml.ops)} ops")


CUSTOM_OPS = ("CUSTOM", "MAP_CUSTOM1", "MAP_CUSTOM2", "MAP_CUSTOM3", "MAP_UNARY", "MAP_BINARY",
              "MAP_CUSTOM1_F32", "MAP_CUSTOM2_F32", "MAP_CUSTOM3_F32")


def _graph_no_custom(view, graph, _valid) -> Violation | None:
    ops = view.profile.ggml
    custom = [ops.op_value(name) for name in CUSTOM_OPS if name in ops.ops]
    at = _first(np.isin(graph.tensors["op"], custom))
    if at is None:
        return None
    return Violation(f"tensors[{at}].op", ops.op_name(int(graph.tensors["op"][at])),
                     "custom ops carry function pointers and are never executed")


def topological_order(graph) -> np.ndarray | None:
    """Indices of the graph's tensors ordered so every src/view_src comes first; None on a cycle.

    Links to ids that are absent are ignored here (a separate rule rejects them).  Real
    clients serialize every tensor after its sources, so the array order itself is checked
    first, vectorised; the general sort runs only for graphs in some other order.  A tensor
    naming itself is no cycle: ggml_cast sets its result's src[1] to the result (a CPY into
    itself), so every graph with a cast holds such a link.
    """
    n = graph.n_tensors
    targets = graph.link_rows
    targets = np.where(targets == np.arange(n)[:, None], -1, targets)
    if not (targets >= np.arange(n)[:, None]).any():
        return np.arange(n, dtype=np.int64)
    indegree = np.zeros(n, dtype=np.int64)
    users: list[list[int]] = [[] for _ in range(n)]
    for k, row in enumerate(targets.tolist()):
        for j in row:
            if j >= 0:
                users[j].append(k)
                indegree[k] += 1
    ready = [k for k in range(n) if indegree[k] == 0]
    order = []
    while ready:
        k = ready.pop()
        order.append(k)
        for user in users[k]:
            indegree[user] -= 1
            if indegree[user] == 0:
                ready.append(user)
    return np.array(order, dtype=np.int64) if len(order) == n else None


# -- the table ---------------------------------------------------------------------------------

C = Command
_DEVICE_COMMANDS = (C.ALLOC_BUFFER, C.GET_ALIGNMENT, C.GET_MAX_SIZE, C.GET_DEVICE_MEMORY, C.GET_ALLOC_SIZE,
                    C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE, C.COMM_ALLREDUCE, C.COMM_FREE)
_TENSOR_COMMANDS = (C.SET_TENSOR, C.SET_TENSOR_HASH, C.GET_TENSOR, C.COPY_TENSOR, C.INIT_TENSOR,
                    C.GET_ALLOC_SIZE, C.MEMSET_TENSOR, C.SET_TENSOR_2D, C.GET_TENSOR_2D, C.COMM_ALLREDUCE)
_ALL = tuple(Command)

RULES: tuple[Rule, ...] = (
    # §2 framing and §3 handshake: enforced by protocol.framing
    Rule(section="2.2", key="frame.command", title="unknown command byte closes the connection", level=MUST,
         scope="framing", commands=_ALL),
    Rule(section="2.4", key="frame.fixed-size", title="fixed-size request with a wrong size closes the connection",
         level=MUST, scope="framing", commands=_ALL),
    Rule(section="2.4", key="frame.data-size", title="data tail whose length differs from what the head announces "
         "closes the connection", level=MUST, scope="framing", commands=(C.SET_TENSOR_2D,)),
    Rule(section="2.4", key="frame.min-size", title="variable request shorter than its fixed part closes the "
         "connection", level=MUST, scope="framing", commands=(C.SET_TENSOR, C.GRAPH_COMPUTE, C.SET_TENSOR_2D)),
    Rule(section="3.1", key="hello.first", title="first command other than HELLO closes the connection", level=MUST,
         scope="framing", commands=_ALL),
    Rule(section="3.1", key="hello.once", title="second HELLO closes the connection", level=MUST, scope="framing",
         commands=(C.HELLO,)),
    Rule(section="3.1", key="hello.size", title="HELLO with the other version family's size closes the connection",
         level=MUST, scope="framing", commands=(C.HELLO,)),
    Rule(section="3.1", key="hello.caps-zero", title="a server without RDMA accepts any client conn_caps, answers "
         "all-zero caps and stays on TCP", level=MUST, scope="behaviour", commands=(C.HELLO,), check=None,
         advisory="CVE-2026-118375", serves=True),
    # §4.4 every rpc_tensor
    Rule(section="4.4", key="tensor.type", title="tensor type unknown to the version or removed is rejected",
         level=MUST, scope="tensor", commands=_TENSOR_COMMANDS, check=_tensor_type,
         advisory="CVE-2024-42477, type 4/5 division by zero (2026-03)"),
    Rule(section="4.4", key="tensor.blocks", title="quantized tensor whose ne[0] is not a multiple of the block "
         "size is rejected", level=MUST, scope="tensor", commands=_TENSOR_COMMANDS, check=_tensor_blocks,
         advisory="llama.cpp #25288"),
    Rule(section="4.4", key="tensor.elements", title="tensor whose dimensions above 1 multiply past INT64_MAX "
         "elements is rejected, even when another dimension is 0", level=MUST, scope="tensor",
         commands=_TENSOR_COMMANDS, check=_tensor_elements, advisory="upstream asserts (abort)"),
    Rule(section="4.4", key="tensor.bounds", title="tensor whose data lies before its buffer's base or whose "
         "data+nbytes runs past its end is rejected", level=MUST, scope="tensor", commands=_TENSOR_COMMANDS,
         check=_tensor_bounds, advisory="upstream asserts (abort), CVE-2026-137567"),
    Rule(section="4.4", key="tensor.foreign", title="INIT_TENSOR and GET_ALLOC_SIZE naming a buffer of another "
         "server are served as if the buffer were 0", level=MUST, scope="behaviour",
         commands=(C.INIT_TENSOR, C.GET_ALLOC_SIZE), check=None, advisory="multi-server clients", serves=True),
    # §5 devices
    Rule(section="5", key="device.index", title="device index not below DEVICE_COUNT is rejected", level=MUST,
         scope="request", commands=_DEVICE_COMMANDS, check=_device),
    Rule(section="5.5", key="alloc_size.covers", title="GET_ALLOC_SIZE answers at least the tensor's nbytes",
         level=MUST, scope="behaviour", commands=(C.GET_ALLOC_SIZE,), check=None,
         advisory="3.6.1 clients allocate the answer as is", serves=True),
    # §6 buffers
    Rule(section="6", key="buffer.handle", title="remote_ptr the server never handed out is rejected", level=MUST,
         scope="request", commands=(C.BUFFER_GET_BASE, C.FREE_BUFFER, C.BUFFER_CLEAR), check=_live_handle,
         advisory="buffer tracking (2024-05)"),
    # §7 tensors
    Rule(section="7.1", key="set_tensor.buffer", title="SET_TENSOR on a tensor without a live buffer is rejected",
         level=MUST, scope="request", commands=(C.SET_TENSOR,), check=_needs_buffer("tensor"),
         advisory="null buffer (2025-07)"),
    Rule(section="7.1", key="set_tensor.region", title="SET_TENSOR data outside the buffer is rejected", level=MUST,
         scope="sized", commands=(C.SET_TENSOR,), check=_sized_region, advisory="CVE-2024-42479"),
    Rule(section="7.1", key="set_tensor.in-tensor", title="SET_TENSOR data past the tensor's nbytes is rejected",
         level=MUST, scope="sized", commands=(C.SET_TENSOR,), check=_sized_in_tensor,
         advisory="upstream asserts (abort)"),
    Rule(section="7.2", key="get_tensor.buffer", title="GET_TENSOR on a tensor without a live buffer is rejected",
         level=MUST, scope="request", commands=(C.GET_TENSOR,), check=_needs_buffer("tensor"),
         advisory="null buffer (2025-07)"),
    Rule(section="7.2", key="get_tensor.region", title="GET_TENSOR region outside the buffer is rejected", level=MUST,
         scope="request", commands=(C.GET_TENSOR,), check=_get_tensor_region, advisory="CVE-2024-42478"),
    Rule(section="7.2", key="get_tensor.in-tensor", title="GET_TENSOR region past the tensor's nbytes is rejected",
         level=MUST, scope="request", commands=(C.GET_TENSOR,), check=_get_in_tensor,
         advisory="upstream asserts (abort)"),
    Rule(section="7.3", key="set_tensor_hash.buffer", title="SET_TENSOR_HASH on a tensor without a live buffer is "
         "rejected when the hash is cached", level=MUST, scope="sized", commands=(C.SET_TENSOR_HASH,),
         check=_sized_buffer, advisory="null buffer (2025-07)"),
    Rule(section="7.3", key="set_tensor_hash.region", title="SET_TENSOR_HASH whose cached data does not fit is "
         "rejected", level=MUST, scope="sized", commands=(C.SET_TENSOR_HASH,), check=_sized_region,
         advisory="CVE-2024-42479"),
    Rule(section="7.3", key="set_tensor_hash.in-tensor", title="SET_TENSOR_HASH whose cached data runs past the "
         "tensor's nbytes is rejected", level=MUST, scope="sized", commands=(C.SET_TENSOR_HASH,),
         check=_sized_in_tensor, advisory="upstream asserts (abort)"),
    Rule(section="7.4", key="copy_tensor.buffers", title="COPY_TENSOR with src or dst outside a live buffer is "
         "rejected", level=MUST, scope="request", commands=(C.COPY_TENSOR,), check=_copy_buffers,
         advisory="null buffer (2025-07)"),
    Rule(section="7.4", key="copy_tensor.fits", title="COPY_TENSOR whose src does not fit after dst.data is "
         "rejected", level=MUST, scope="request", commands=(C.COPY_TENSOR,), check=_copy_fits,
         advisory="ggml PR 1103 (cpy_tensor RCE, 2025-02)"),
    Rule(section="7.6", key="memset_tensor.buffer", title="MEMSET_TENSOR on a tensor without a live buffer is "
         "rejected", level=MUST, scope="request", commands=(C.MEMSET_TENSOR,), check=_needs_buffer("tensor")),
    Rule(section="7.6", key="memset_tensor.region", title="MEMSET_TENSOR region outside the tensor or buffer is "
         "rejected", level=MUST, scope="request", commands=(C.MEMSET_TENSOR,), check=_memset_region,
         advisory="MEMSET_TENSOR bounds (5.0.0)"),
    Rule(section="7.7", key="tensor_2d.copies", title="2-D transfer of no copy, of empty copies, or whose size "
         "times n_copies overflows 64 bits is rejected", level=MUST, scope="request",
         commands=(C.SET_TENSOR_2D, C.GET_TENSOR_2D), check=_copies),
    Rule(section="7.7", key="tensor_2d.overlap", title="2-D transfer whose copies overlap (stride below size) is "
         "rejected", level=MUST, scope="request", commands=(C.SET_TENSOR_2D, C.GET_TENSOR_2D), check=_no_overlap,
         advisory="GET_TENSOR_2D with stride 0 and a huge n_copies (upstream aborts allocating the reply)",
         stricter="upstream writes and reads overlapping copies one after the other"),
    Rule(section="7.7", key="tensor_2d.buffer", title="2-D transfer on a tensor without a live buffer is rejected",
         level=MUST, scope="request", commands=(C.SET_TENSOR_2D, C.GET_TENSOR_2D), check=_needs_buffer("tensor")),
    Rule(section="7.7", key="tensor_2d.region", title="2-D transfer whose copies reach outside the buffer is "
         "rejected", level=MUST, scope="request", commands=(C.SET_TENSOR_2D, C.GET_TENSOR_2D), check=_region_2d),
    Rule(section="7.7", key="tensor_2d.in-tensor", title="2-D transfer whose copies run past the tensor's nbytes is "
         "rejected", level=MUST, scope="request", commands=(C.SET_TENSOR_2D, C.GET_TENSOR_2D),
         check=_in_tensor_2d),
    # §8 graphs
    Rule(section="8.1", key="graph.counts", title="GRAPH_COMPUTE whose counts exceed the payload is rejected",
         level=MUST, scope="framing", commands=(C.GRAPH_COMPUTE,)),
    Rule(section="8.1", key="graph.trailing", title="GRAPH_COMPUTE with bytes after the tensor array is rejected",
         level=SHOULD, scope="framing", commands=(C.GRAPH_COMPUTE,), stricter="upstream ignores the bytes"),
    Rule(section="8.2", key="graph.node-nonzero", title="graph node id 0 is rejected", level=MUST, scope="graph",
         commands=(C.GRAPH_COMPUTE,), check=_graph_node_nonzero, advisory="llama.cpp #25299"),
    Rule(section="8.2", key="graph.ids-known", title="graph node, src or view_src id missing from the tensors is "
         "rejected", level=MUST, scope="graph", commands=(C.GRAPH_COMPUTE,), check=_graph_ids_known,
         advisory="input validation (2025-04)"),
    Rule(section="8.2", key="graph.ids-unique", title="graph with duplicate or zero tensor ids is rejected",
         level=SHOULD, scope="graph", commands=(C.GRAPH_COMPUTE,), check=_graph_ids_unique,
         stricter="upstream keeps the first tensor of an id"),
    Rule(section="8.2", key="graph.acyclic", title="graph whose links form a cycle is rejected (a tensor naming "
         "itself is no cycle)", level=SHOULD, scope="graph", commands=(C.GRAPH_COMPUTE,), check=_graph_acyclic,
         stricter="upstream does not look for cycles"),
    Rule(section="8.2", key="graph.self-reference", title="a tensor naming itself among its sources (ggml_cast's "
         "CPY, src[1] = the result) is no cycle: the graph is computed", level=MUST, scope="behaviour",
         commands=(C.GRAPH_COMPUTE,), serves=True),
    Rule(section="8.2", key="graph.types", title="graph tensor of an unknown or removed type is rejected", level=MUST,
         scope="graph", commands=(C.GRAPH_COMPUTE,), check=_graph_types, advisory="CVE-2024-42477"),
    Rule(section="8.2", key="graph.blocks", title="graph tensor with ne[0] not a multiple of its block size is "
         "rejected", level=MUST, scope="graph", commands=(C.GRAPH_COMPUTE,), check=_graph_blocks,
         advisory="llama.cpp #25288"),
    Rule(section="8.2", key="graph.null-buffer-data", title="graph tensor with buffer 0 and data set is rejected "
         "(2.0.0: data ignored)", level=MUST, scope="graph", commands=(C.GRAPH_COMPUTE,), check=_graph_null_data,
         advisory="CVE-2026-34159 (GHSA-j8rj-fmpv-wcxw)"),
    Rule(section="8.2", key="graph.buffers", title="graph tensor naming a buffer the server never handed out is "
         "rejected", level=MUST, scope="graph", commands=(C.GRAPH_COMPUTE,), check=_graph_buffers,
         advisory="buffer tracking (2024-05)"),
    Rule(section="8.2", key="graph.elements", title="graph tensor whose dimensions above 1 multiply past INT64_MAX "
         "elements is rejected", level=MUST, scope="graph", commands=(C.GRAPH_COMPUTE,), check=_graph_elements,
         advisory="upstream asserts (abort)"),
    Rule(section="8.2", key="graph.bounds", title="graph tensor whose data+nbytes runs past its buffer is rejected",
         level=MUST, scope="graph", commands=(C.GRAPH_COMPUTE,), check=_graph_bounds,
         advisory="upstream asserts (abort)"),
    Rule(section="8.2", key="graph.ops-known", title="graph tensor with an op number unknown to the version is "
         "rejected", level=MUST, scope="graph", commands=(C.GRAPH_COMPUTE,), check=_graph_ops_known,
         advisory="compute failure aborts upstream"),
    Rule(section="8.2", key="graph.no-custom", title="graph with CUSTOM/MAP_CUSTOM ops is rejected", level=MUST,
         scope="graph", commands=(C.GRAPH_COMPUTE,), check=_graph_no_custom, advisory="llama.cpp #25289"),
    Rule(section="8.3", key="recompute.stored", title="GRAPH_RECOMPUTE without a stored graph (or naming a uid "
         "not cached) is rejected",
         level=MUST, scope="request", commands=(C.GRAPH_RECOMPUTE,), check=_recompute_stored),
    Rule(section="8.3", key="recompute.after-free", title="GRAPH_RECOMPUTE after FREE_BUFFER of a buffer the graph "
         "uses is rejected", level=MUST, scope="behaviour", commands=(C.FREE_BUFFER, C.GRAPH_RECOMPUTE), check=None,
         advisory="GHSA-2phh-px2f-2qmx"),
    Rule(section="8.3", key="graph-cache.keeps", title="a server keeps every graph a client sent with a non-zero "
         "uid, the latest under each uid, until the device's cache holds 1024 of them (then it clears the cache, "
         "as the client clears its record) or a buffer is freed on the connection",
         level=MUST, scope="behaviour", commands=(C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE), serves=True),
    Rule(section="8.4", key="exec.rows-in-range", title="GET_ROWS/SET_ROWS/GET_ROWS_BACK with a row index out of "
         "range is rejected", level=MUST, scope="execution", commands=(C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE),
         check=None, advisory="llama.cpp #26825, #26912"),
    Rule(section="8.4", key="exec.expert-ids", title="MUL_MAT_ID/ADD_ID with an expert id out of range is rejected",
         level=MUST, scope="execution", commands=(C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE), check=None,
         advisory="mixture-of-experts ids (OOB read)"),
    Rule(section="8.4", key="exec.state-ids", title="SSM_SCAN state ids (its ids source) out of range are "
         "rejected", level=MUST, scope="execution", commands=(C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE), check=None,
         advisory="llama.cpp #25765"),
    Rule(section="8.4", key="exec.op-params", title="op_params outside what the op accepts (geometry, counts, "
         "offsets) are rejected", level=MUST, scope="execution", commands=(C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE),
         check=None, advisory="llama.cpp #25704, CONV_TRANSPOSE_2D stride (OOB write)"),
    Rule(section="8.4", key="exec.view-params", title="ACC/SET with strides or offset outside the destination is "
         "rejected", level=MUST, scope="execution", commands=(C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE), check=None,
         advisory="llama.cpp #25764"),
    Rule(section="8.4", key="exec.unsupported", title="an op, type or parameter the server cannot run is rejected, "
         "not crashed on", level=MUST, scope="execution", commands=(C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE), check=None,
         advisory="compute failure aborts upstream"),
    Rule(section="8.4", key="exec.use-count", title="results do not depend on use_count: a count that misstates "
         "a node's users makes no node skip writing its result", level=SHOULD, scope="behaviour",
         commands=(C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE), serves=True,
         stricter="7.0.0's CPU fuses an RMS_NORM whose use_count is 1 into the next MUL and never writes its result"),
    # §9 the hash cache
    Rule(section="9", key="cache.atomic", title="a cache entry never appears under its final name before it holds "
         "all its bytes (written elsewhere, then renamed)", level=MUST, scope="behaviour",
         commands=(C.SET_TENSOR,), serves=True, stricter="upstream writes straight to the final name"),
    Rule(section="9", key="cache.verified", title="a cache file whose bytes do not hash to its name is a miss "
         "(SET_TENSOR_HASH answers 0), never a hit", level=MUST, scope="behaviour", commands=(C.SET_TENSOR_HASH,),
         serves=True, stricter="upstream loads the file and never hashes it again"),
    # §10 the server-to-server link
    Rule(section="10.1", key="comm.ranks", title="COMM_INIT naming no device of the server, a world other than 2 "
         "or a rank not below it is answered ok=0 and the connection kept", level=MUST, scope="behaviour",
         commands=(C.COMM_INIT,), serves=True),
    Rule(section="10.1", key="comm.no-link", title="COMM_INIT whose link cannot be set up (a port outside 1-65535, "
         "no listening socket, no peer within the timeout, a failed handshake) is answered ok=0 and the "
         "connection kept", level=MUST, scope="behaviour", commands=(C.COMM_INIT,), serves=True,
         advisory="a close on COMM_INIT aborts the client; an upstream rank 0 without a peer waits forever"),
    Rule(section="10.1", key="comm.handshake", title="COMM_INIT answers ok=1 only once the link is up: rank 1 sent "
         "its 24 bytes of conn_caps and rank 0 answered 24; a server without RDMA sends zeros and the link stays "
         "on TCP", level=MUST, scope="behaviour", commands=(C.COMM_INIT,), serves=True),
    Rule(section="10.1", key="comm.peers", title="COMM_INIT naming a host the server does not admit is answered "
         "ok=0 without connecting", level=MUST, scope="behaviour", commands=(C.COMM_INIT,), serves=True,
         advisory="unauthenticated peering (upstream connects anywhere)"),
    Rule(section="10.1", key="comm.listen", title="rank 0 listens on the address of its own RPC endpoint, not on "
         "every interface, and only until rank 1 connects or a timeout", level=SHOULD, scope="behaviour",
         commands=(C.COMM_INIT,), serves=True, advisory="unauthenticated peering (upstream binds every interface)"),
    Rule(section="10.1", key="comm.admit", title="rank 0 takes as its peer only a connection from an address it "
         "admits; it closes others and waits on", level=SHOULD, scope="behaviour", commands=(C.COMM_INIT,),
         serves=True, advisory="unauthenticated peering (upstream takes the first connection)"),
    Rule(section="10.2", key="comm.linked", title="COMM_ALLREDUCE on a device without a link is rejected",
         level=MUST, scope="request", commands=(C.COMM_ALLREDUCE,), check=_linked),
    Rule(section="10.2", key="comm.buffer", title="COMM_ALLREDUCE on a tensor without a live buffer is rejected",
         level=MUST, scope="request", commands=(C.COMM_ALLREDUCE,), check=_needs_buffer("tensor")),
    Rule(section="10.2", key="comm.f32", title="COMM_ALLREDUCE of a tensor that is not contiguous F32 is rejected",
         level=MUST, scope="request", commands=(C.COMM_ALLREDUCE,), check=_reduce_f32,
         advisory="upstream sums any type as raw bytes", stricter="upstream sums any type ADD takes"),
    Rule(section="10.2", key="comm.wire", title="an all-reduce sends rank 0's partial first, as F32 below 32768 "
         "elements and as BF16 (ggml's rounding) from 32768 on, and leaves in the tensor its own partial plus the "
         "peer's as received", level=MUST, scope="behaviour", commands=(C.COMM_ALLREDUCE,), serves=True),
    Rule(section="10.2", key="comm.peer-agrees", title="an all-reduce whose peer sends another size, or stops "
         "sending, ends the link and closes the connection", level=MUST, scope="behaviour",
         commands=(C.COMM_ALLREDUCE,), advisory="upstream desynchronises or waits forever"),
    Rule(section="10.3", key="comm.free", title="COMM_FREE closes the device's link if it has one and is no error "
         "without one; a later COMM_INIT may set up a new link", level=MUST, scope="behaviour",
         commands=(C.COMM_FREE,), serves=True),
)

BY_KEY: dict[str, Rule] = {rule.key: rule for rule in RULES}
assert len(BY_KEY) == len(RULES), "rule keys must be unique"


def rule(key: str) -> Rule:
    """The rule named `key`.  Consumers look their rules up once, where they are declared, so
    a misspelt key fails at import instead of silently dropping a SPEC citation."""
    found = BY_KEY.get(key)
    if found is None:
        raise KeyError(f"no rule {key!r} in protocol.rules (known: {', '.join(sorted(BY_KEY))})")
    return found


@lru_cache(maxsize=None)
def rules_for(command: Command, scope: str) -> tuple[Rule, ...]:
    return tuple(r for r in RULES if r.scope == scope and r.applies_to(command))


def graph_validity(view: ServerView, graph) -> dict[str, np.ndarray]:
    """Per-tensor masks the graph checks share (computed once per graph)."""
    types = graph.tensors["type"]
    in_range = types < view.profile.ggml.type_count
    blocks = view.profile.ggml.block_sizes[np.where(in_range, types, 0)]
    return {"type": in_range & (blocks > 0)}


# -- applying the table ---------------------------------------------------------------------------


@lru_cache(maxsize=None)
def tensor_fields(schema) -> tuple[tuple[str, int | None], ...]:
    """The rpc_tensor fields of a request schema: (name, None) or (name, array length)."""
    from construct import Array, Renamed

    from .tensor import RPC_TENSOR

    tensors = tuple(RPC_TENSOR.values())
    found = []
    for sub in getattr(schema, "subcons", ()):
        inner = sub.subcon if isinstance(sub, Renamed) else sub
        while isinstance(inner, Renamed):
            inner = inner.subcon
        if inner in tensors:
            found.append((sub.name, None))
        elif isinstance(inner, Array) and inner.subcon in tensors:
            found.append((sub.name, inner.count))
    return tuple(found)


def iter_tensors(schema, body):
    """(field path, tensor) for every tensor a request carries; array slots with id 0 are
    absent tensors (GET_ALLOC_SIZE's unused srcs) and skipped."""
    for name, count in tensor_fields(schema):
        if count is None:
            yield name, body[name]
        else:
            for i, tensor in enumerate(body[name]):
                if tensor.id:
                    yield f"{name}[{i}]", tensor


@dataclass(frozen=True)
class RequestChecks:
    """The rules one command's requests are checked against, looked up once per command
    (a server checks every request, so the table is not searched per request)."""

    schema: object
    tensor: tuple[Rule, ...]
    request: tuple[Rule, ...]
    graph: tuple[Rule, ...]

    def first_violation(self, view: ServerView, body, graph=None) -> tuple[Rule, Violation] | None:
        """The first rule a request breaks (tensor rules, then request rules, then graph rules)."""
        return next(self.violations(view, body, graph), None)

    def violations(self, view: ServerView, body, graph=None):
        """Every (rule, violation) a request breaks, in the order a server checks them."""
        if self.tensor:
            for path, tensor in iter_tensors(self.schema, body):
                for rule in self.tensor:
                    found = rule.run(view, tensor)
                    if found is not None:
                        yield rule, Violation(f"{path}.{found.field}", found.value, found.detail)
        for rule in self.request:
            found = rule.run(view, body)
            if found is not None:
                yield rule, found
        if graph is not None:
            valid = graph_validity(view, graph)
            for rule in self.graph:
                found = rule.run(view, graph, valid)
                if found is not None:
                    yield rule, found


@lru_cache(maxsize=None)
def request_checks(command: Command, schema) -> RequestChecks:
    return RequestChecks(schema, rules_for(command, "tensor"), rules_for(command, "request"),
                         rules_for(command, "graph"))


def sized_violation(view: ServerView, command: Command, body, size: int) -> tuple[Rule, Violation] | None:
    for rule in rules_for(command, "sized"):
        found = rule.run(view, body, size)
        if found is not None:
            return rule, found
    return None


def as_error(command: Command, broken: tuple[Rule, Violation]):
    """The RemoteProtocolError that reports a broken rule."""
    from .errors import RemoteProtocolError

    rule, violation = broken
    detail = f" ({violation.detail})" if violation.detail else ""
    return RemoteProtocolError(f"{rule.title}{detail}", command=command.name, field=violation.field,
                               value=violation.value, section=rule.section, key=rule.key)
