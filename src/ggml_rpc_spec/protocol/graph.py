"""GRAPH_COMPUTE payload: node ids and the rpc_tensor array, decoded at once with NumPy.

Payload (after the optional device index, see messages.py):

    n_nodes u32 | nodes u64[n_nodes] | n_tensors u32 | tensors rpc_tensor[n_tensors]

`nodes` lists, in execution order, the ids of the tensors to compute; `tensors` holds every
tensor the nodes reach through src[] and view_src.  A real client sends ~1400 tensors per
graph; decoding them one construct field at a time would dominate the server's work, so
`decode_graph` views the bytes as a NumPy structured array (dtype derived from the
rpc_tensor schema) and copies nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from construct import Array, Int32ul, Int64ul, Rebuild, Struct, len_, this

from .errors import LocalProtocolError, RemoteProtocolError
from .tensor import RPC_TENSOR, RPC_TENSOR_DTYPE
from .versions import Profile

_U32 = struct.Struct("<I")
NODE_DTYPE = np.dtype("<u8")


@dataclass(eq=False)
class Graph:
    """A decoded graph: `nodes` (uint64 ids) and `tensors` (structured rpc_tensor array).

    A graph is not changed once made: the rules and the executor share its id -> row
    lookups, computed once (`node_rows`, `link_rows`)."""

    nodes: np.ndarray
    tensors: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return _same_bytes(self.nodes, other.nodes) and _same_bytes(self.tensors, other.tensors)

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_tensors(self) -> int:
        return len(self.tensors)

    @cached_property
    def node_rows(self) -> np.ndarray:
        """The tensor row of each node id (-1: id 0 or absent)."""
        return id_rows(self.tensors["id"], self.nodes)

    @cached_property
    def link_rows(self) -> np.ndarray:
        """Per tensor, the rows of its src[] then of its view_src (-1: none or absent)."""
        links = np.concatenate([self.tensors["src"], self.tensors["view_src"][:, None]], axis=1)
        return id_rows(self.tensors["id"], links)


def id_rows(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The row of each id in `wanted` (any shape) among the tensor `ids`, -1 for id 0 and
    for ids the graph lacks; whole arrays at once, since graphs hold thousands of links."""
    wanted = np.asarray(wanted)
    rows = np.full(wanted.shape, -1, dtype=np.intp)
    linked = wanted != 0  # most src[] slots are empty: look up only the others
    if not len(ids) or not linked.any():
        return rows
    sorter = np.argsort(ids, kind="stable")
    ordered = ids[sorter]
    values = wanted[linked]
    found = np.minimum(np.searchsorted(ordered, values), len(ids) - 1)
    rows[linked] = np.where(ordered[found] == values, sorter[found], -1)
    return rows


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a 1-D array.  np.unique does the same through a hash
    table, which costs 10-20 times a sort at the sizes of a graph's columns."""
    ordered = np.sort(values)
    keep = np.ones(len(ordered), bool)
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Byte equality without copies (servers compare each graph with the stored one)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


def graph_tail_schema(profile: Profile) -> Struct:
    """The construct form of the graph tail (reference layout; decode_graph is the fast path)."""
    tensor = RPC_TENSOR[profile.tensor]
    return Struct(
        "n_nodes" / Rebuild(Int32ul, len_(this.nodes)),
        "nodes" / Array(this.n_nodes, Int64ul),
        "n_tensors" / Rebuild(Int32ul, len_(this.tensors)),
        "tensors" / Array(this.n_tensors, tensor),
    )


def decode_graph(profile: Profile, tail, *, base_offset: int = 0) -> Graph:
    """Decode the graph tail of a GRAPH_COMPUTE payload without copying it.

    Every count is checked against the bytes actually present before it is used, and
    bytes left over after the tensor array are an error.  Raises RemoteProtocolError
    naming the field; `base_offset` is where `tail` starts in the frame, for the message.
    """
    view = memoryview(tail).cast("B")
    total = len(view)

    def fail(field: str, value: int, rule: str, at: int) -> RemoteProtocolError:
        return RemoteProtocolError(rule, command="GRAPH_COMPUTE", field=field, value=value,
                                   section="8.1", offset=base_offset + at)

    if total < 4:
        raise fail("n_nodes", total, f"graph payload ends after {total} bytes, before n_nodes", 0)
    (n_nodes,) = _U32.unpack_from(view, 0)
    nodes_end = 4 + n_nodes * 8
    if nodes_end + 4 > total:
        raise fail("n_nodes", n_nodes, f"{n_nodes} node ids and n_tensors need {nodes_end + 4} bytes, "
                   f"the payload has {total}", 0)
    (n_tensors,) = _U32.unpack_from(view, nodes_end)
    dtype = RPC_TENSOR_DTYPE[profile.tensor]
    expected = nodes_end + 4 + n_tensors * dtype.itemsize
    if expected != total:
        rule = (f"{n_tensors} tensors of {dtype.itemsize} bytes need {expected} bytes in all, "
                f"the payload has {total}")
        raise fail("n_tensors", n_tensors, rule, nodes_end)
    nodes = np.frombuffer(view, dtype=NODE_DTYPE, count=n_nodes, offset=4)
    tensors = np.frombuffer(view, dtype=dtype, count=n_tensors, offset=nodes_end + 4)
    return Graph(nodes=nodes, tensors=tensors)


def encode_graph(profile: Profile, graph: Graph) -> list[bytes | memoryview]:
    """The graph tail as buffers ready for a vectored send (tensor bytes are not copied)."""
    dtype = RPC_TENSOR_DTYPE[profile.tensor]
    if graph.tensors.dtype != dtype:
        raise LocalProtocolError(f"tensor array has dtype {graph.tensors.dtype}, protocol {profile.name} "
                                 f"needs the {profile.tensor!r} rpc_tensor layout", command="GRAPH_COMPUTE",
                                 field="tensors")
    nodes = np.ascontiguousarray(graph.nodes, dtype=NODE_DTYPE)
    tensors = np.ascontiguousarray(graph.tensors)
    return [
        _U32.pack(len(nodes)) + nodes.tobytes() + _U32.pack(len(tensors)),
        tensors.view(np.uint8).data,  # a memoryview of the array's bytes
    ]


def tensors_from_containers(profile: Profile, tensors) -> np.ndarray:
    """A structured array from rpc_tensor Containers (convenience for building graphs)."""
    schema = RPC_TENSOR[profile.tensor]
    raw = b"".join(schema.build(t) for t in tensors)
    return np.frombuffer(raw, dtype=RPC_TENSOR_DTYPE[profile.tensor]).copy()
