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
from typing import Callable, Protocol

import numpy as np

from .commands import Command
from .ggml import elements_overflow, nbytes, nbytes_array
from .graph import distinct
from .versions import Profile

MUST, SHOULD = "MUST", "SHOULD"


@dataclass(frozen=True)
class BufferInfo:
    base: int
    size: int

    @property
    def end(self) -> int:
        return self.base + self.size


class ServerView(Protocol):
    """What a rule may consult: the server's state as seen by one connection."""

    profile: Profile
    n_devices: int

    def buffer(self, handle: int) -> BufferInfo | None:
        """The live buffer of this connection with that handle (remote_ptr), or None."""

    def has_stored_graph(self, device: int) -> bool: ...


@dataclass(frozen=True)
class Violation:
    field: str
    value: object
    detail: str = ""


@dataclass(frozen=True)
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
    level: str
    scope: str
    commands: tuple[Command, ...]
    check: Callable | None = None
    advisory: str = ""
    serves: bool = False  # the rule obliges the server to serve what it describes (not to close)

    @property
    def case_id(self) -> str:
        return f"§{self.section} {self.title}"

    def applies_to(self, command: Command) -> bool:
        return command in self.commands


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
    if body.device < view.n_devices and not view.has_stored_graph(body.device):
        return Violation("device", body.device, "no graph is stored for this device on this connection")
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
                    C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE)
_TENSOR_COMMANDS = (C.SET_TENSOR, C.SET_TENSOR_HASH, C.GET_TENSOR, C.COPY_TENSOR, C.INIT_TENSOR,
                    C.GET_ALLOC_SIZE, C.MEMSET_TENSOR)
_ALL = tuple(Command)

RULES: tuple[Rule, ...] = (
    # §2 framing and §3 handshake: enforced by protocol.framing
    Rule("2.2", "frame.command", "unknown command byte closes the connection", MUST, "framing", _ALL),
    Rule("2.4", "frame.fixed-size", "fixed-size request with a wrong size closes the connection", MUST,
         "framing", _ALL),
    Rule("2.4", "frame.min-size", "variable request shorter than its fixed part closes the connection", MUST,
         "framing", (C.SET_TENSOR, C.GRAPH_COMPUTE)),
    Rule("3.1", "hello.first", "first command other than HELLO closes the connection", MUST, "framing", _ALL),
    Rule("3.1", "hello.once", "second HELLO closes the connection", MUST, "framing", (C.HELLO,)),
    Rule("3.1", "hello.size", "HELLO with the other version family's size closes the connection", MUST,
         "framing", (C.HELLO,)),
    Rule("3.1", "hello.caps-zero", "a server without RDMA accepts any client conn_caps, answers all-zero caps and "
         "stays on TCP", MUST, "behaviour", (C.HELLO,), None, "CVE-2026-118375",
         serves=True),
    # §4.4 every rpc_tensor
    Rule("4.4", "tensor.type", "tensor type unknown to the version or removed is rejected", MUST, "tensor",
         _TENSOR_COMMANDS, _tensor_type, "CVE-2024-42477, type 4/5 division by zero (2026-03)"),
    Rule("4.4", "tensor.blocks", "quantized tensor whose ne[0] is not a multiple of the block size is rejected",
         MUST, "tensor", _TENSOR_COMMANDS, _tensor_blocks, "llama.cpp #25288"),
    Rule("4.4", "tensor.elements", "tensor whose dimensions above 1 multiply past INT64_MAX elements is rejected, "
         "even when another dimension is 0", MUST, "tensor", _TENSOR_COMMANDS, _tensor_elements,
         "upstream asserts (abort)"),
    Rule("4.4", "tensor.bounds", "tensor whose data lies before its buffer's base or whose data+nbytes runs "
         "past its end is rejected", MUST, "tensor", _TENSOR_COMMANDS, _tensor_bounds,
         "upstream asserts (abort), CVE-2026-137567"),
    Rule("4.4", "tensor.foreign", "INIT_TENSOR and GET_ALLOC_SIZE naming a buffer of another server are served "
         "as if the buffer were 0", MUST, "behaviour", (C.INIT_TENSOR, C.GET_ALLOC_SIZE), None,
         "multi-server clients", serves=True),
    # §5 devices
    Rule("5", "device.index", "device index not below DEVICE_COUNT is rejected", MUST, "request",
         _DEVICE_COMMANDS, _device),
    Rule("5.5", "alloc_size.covers", "GET_ALLOC_SIZE answers at least the tensor's nbytes", MUST, "behaviour",
         (C.GET_ALLOC_SIZE,), None, "3.6.1 clients allocate the answer as is",
         serves=True),
    # §6 buffers
    Rule("6", "buffer.handle", "remote_ptr the server never handed out is rejected", MUST, "request",
         (C.BUFFER_GET_BASE, C.FREE_BUFFER, C.BUFFER_CLEAR), _live_handle, "buffer tracking (2024-05)"),
    # §7 tensors
    Rule("7.1", "set_tensor.buffer", "SET_TENSOR on a tensor without a live buffer is rejected", MUST, "request",
         (C.SET_TENSOR,), _needs_buffer("tensor"), "null buffer (2025-07)"),
    Rule("7.1", "set_tensor.region", "SET_TENSOR data outside the buffer is rejected", MUST, "sized",
         (C.SET_TENSOR,), _sized_region, "CVE-2024-42479"),
    Rule("7.1", "set_tensor.in-tensor", "SET_TENSOR data past the tensor's nbytes is rejected", MUST, "sized",
         (C.SET_TENSOR,), _sized_in_tensor, "upstream asserts (abort)"),
    Rule("7.2", "get_tensor.buffer", "GET_TENSOR on a tensor without a live buffer is rejected", MUST, "request",
         (C.GET_TENSOR,), _needs_buffer("tensor"), "null buffer (2025-07)"),
    Rule("7.2", "get_tensor.region", "GET_TENSOR region outside the buffer is rejected", MUST, "request",
         (C.GET_TENSOR,), _get_tensor_region, "CVE-2024-42478"),
    Rule("7.2", "get_tensor.in-tensor", "GET_TENSOR region past the tensor's nbytes is rejected", MUST, "request",
         (C.GET_TENSOR,), _get_in_tensor, "upstream asserts (abort)"),
    Rule("7.3", "set_tensor_hash.buffer", "SET_TENSOR_HASH on a tensor without a live buffer is rejected "
         "when the hash is cached", MUST, "sized", (C.SET_TENSOR_HASH,), _sized_buffer, "null buffer (2025-07)"),
    Rule("7.3", "set_tensor_hash.region", "SET_TENSOR_HASH whose cached data does not fit is rejected", MUST,
         "sized", (C.SET_TENSOR_HASH,), _sized_region, "CVE-2024-42479"),
    Rule("7.3", "set_tensor_hash.in-tensor", "SET_TENSOR_HASH whose cached data runs past the tensor's nbytes is "
         "rejected", MUST, "sized", (C.SET_TENSOR_HASH,), _sized_in_tensor, "upstream asserts (abort)"),
    Rule("7.4", "copy_tensor.buffers", "COPY_TENSOR with src or dst outside a live buffer is rejected", MUST,
         "request", (C.COPY_TENSOR,), _copy_buffers, "null buffer (2025-07)"),
    Rule("7.4", "copy_tensor.fits", "COPY_TENSOR whose src does not fit after dst.data is rejected", MUST,
         "request", (C.COPY_TENSOR,), _copy_fits, "ggml PR 1103 (cpy_tensor RCE, 2025-02)"),
    Rule("7.6", "memset_tensor.buffer", "MEMSET_TENSOR on a tensor without a live buffer is rejected", MUST,
         "request", (C.MEMSET_TENSOR,), _needs_buffer("tensor")),
    Rule("7.6", "memset_tensor.region", "MEMSET_TENSOR region outside the tensor or buffer is rejected", MUST,
         "request", (C.MEMSET_TENSOR,), _memset_region, "MEMSET_TENSOR bounds (5.0.0)"),
    # §8 graphs
    Rule("8.1", "graph.counts", "GRAPH_COMPUTE whose counts exceed the payload is rejected", MUST, "framing",
         (C.GRAPH_COMPUTE,)),
    Rule("8.1", "graph.trailing", "GRAPH_COMPUTE with bytes after the tensor array is rejected", SHOULD,
         "framing", (C.GRAPH_COMPUTE,)),
    Rule("8.2", "graph.node-nonzero", "graph node id 0 is rejected", MUST, "graph", (C.GRAPH_COMPUTE,),
         _graph_node_nonzero, "llama.cpp #25299"),
    Rule("8.2", "graph.ids-known", "graph node, src or view_src id missing from the tensors is rejected", MUST,
         "graph", (C.GRAPH_COMPUTE,), _graph_ids_known, "input validation (2025-04)"),
    Rule("8.2", "graph.ids-unique", "graph with duplicate or zero tensor ids is rejected", SHOULD, "graph",
         (C.GRAPH_COMPUTE,), _graph_ids_unique),
    Rule("8.2", "graph.acyclic", "graph whose links form a cycle is rejected", SHOULD, "graph",
         (C.GRAPH_COMPUTE,), _graph_acyclic),
    Rule("8.2", "graph.types", "graph tensor of an unknown or removed type is rejected", MUST, "graph",
         (C.GRAPH_COMPUTE,), _graph_types, "CVE-2024-42477"),
    Rule("8.2", "graph.blocks", "graph tensor with ne[0] not a multiple of its block size is rejected", MUST,
         "graph", (C.GRAPH_COMPUTE,), _graph_blocks, "llama.cpp #25288"),
    Rule("8.2", "graph.null-buffer-data", "graph tensor with buffer 0 and data set is rejected (2.0.0: "
         "data ignored)", MUST, "graph",
         (C.GRAPH_COMPUTE,), _graph_null_data, "CVE-2026-34159 (GHSA-j8rj-fmpv-wcxw)"),
    Rule("8.2", "graph.buffers", "graph tensor naming a buffer the server never handed out is rejected", MUST,
         "graph", (C.GRAPH_COMPUTE,), _graph_buffers, "buffer tracking (2024-05)"),
    Rule("8.2", "graph.elements", "graph tensor whose dimensions above 1 multiply past INT64_MAX elements is "
         "rejected", MUST, "graph", (C.GRAPH_COMPUTE,), _graph_elements, "upstream asserts (abort)"),
    Rule("8.2", "graph.bounds", "graph tensor whose data+nbytes runs past its buffer is rejected", MUST, "graph",
         (C.GRAPH_COMPUTE,), _graph_bounds, "upstream asserts (abort)"),
    Rule("8.2", "graph.ops-known", "graph tensor with an op number unknown to the version is rejected", MUST,
         "graph", (C.GRAPH_COMPUTE,), _graph_ops_known, "compute failure aborts upstream"),
    Rule("8.2", "graph.no-custom", "graph with CUSTOM/MAP_CUSTOM ops is rejected", MUST, "graph",
         (C.GRAPH_COMPUTE,), _graph_no_custom, "llama.cpp #25289"),
    Rule("8.3", "recompute.stored", "GRAPH_RECOMPUTE without a stored graph is rejected", MUST, "request",
         (C.GRAPH_RECOMPUTE,), _recompute_stored),
    Rule("8.3", "recompute.after-free", "GRAPH_RECOMPUTE after FREE_BUFFER of a buffer the graph uses is "
         "rejected", MUST, "behaviour", (C.FREE_BUFFER, C.GRAPH_RECOMPUTE), None, "GHSA-2phh-px2f-2qmx"),
    Rule("8.4", "exec.rows-in-range", "GET_ROWS/SET_ROWS/GET_ROWS_BACK with a row index out of range is rejected",
         MUST, "execution", (C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE), None, "llama.cpp #26825, #26912"),
    Rule("8.4", "exec.expert-ids", "MUL_MAT_ID/ADD_ID with an expert id out of range is rejected", MUST,
         "execution", (C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE), None, "mixture-of-experts ids (OOB read)"),
    Rule("8.4", "exec.state-ids", "SSM_SCAN/SSM_CONV/recurrent state ids out of range are rejected", MUST,
         "execution", (C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE), None, "llama.cpp #25765"),
    Rule("8.4", "exec.op-params", "op_params outside what the op accepts (geometry, counts, offsets) are "
         "rejected", MUST, "execution", (C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE), None,
         "llama.cpp #25704, CONV_TRANSPOSE_2D stride (OOB write)"),
    Rule("8.4", "exec.view-params", "ACC/SET with strides or offset outside the destination is rejected", MUST,
         "execution", (C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE), None, "llama.cpp #25764"),
    Rule("8.4", "exec.unsupported", "an op, type or parameter the server cannot run is rejected, not "
         "crashed on", MUST, "execution", (C.GRAPH_COMPUTE, C.GRAPH_RECOMPUTE), None,
         "compute failure aborts upstream"),
)

BY_KEY: dict[str, Rule] = {rule.key: rule for rule in RULES}
assert len(BY_KEY) == len(RULES), "rule keys must be unique"


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
                    found = rule.check(view, tensor)
                    if found is not None:
                        yield rule, Violation(f"{path}.{found.field}", found.value, found.detail)
        for rule in self.request:
            found = rule.check(view, body)
            if found is not None:
                yield rule, found
        if graph is not None:
            valid = graph_validity(view, graph)
            for rule in self.graph:
                found = rule.check(view, graph, valid)
                if found is not None:
                    yield rule, found


@lru_cache(maxsize=None)
def request_checks(command: Command, schema) -> RequestChecks:
    return RequestChecks(schema, rules_for(command, "tensor"), rules_for(command, "request"),
                         rules_for(command, "graph"))


def sized_violation(view: ServerView, command: Command, body, size: int) -> tuple[Rule, Violation] | None:
    for rule in rules_for(command, "sized"):
        found = rule.check(view, body, size)
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
