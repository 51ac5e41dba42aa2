"""The one registry of op kernels, and what every kernel module shares.

A kernel is `build(node, ctx) -> step`: it validates everything that can be validated before
running (types, shapes, parameters, index ranges it can see) and raises ExecutionError for
what it cannot compute, then returns a closure that does the work (None: nothing to run).
A GRAPH_RECOMPUTE runs the same closures again.  Ops whose common case is one ufunc call
may also register a batch kernel, `batch(binder, op, rows, ctx) -> (taken, steps)`, that
checks all nodes of the op at once with NumPy and builds the steps of those it takes; the
nodes it does not take go to `build`.

Each kernel declares which rpc_tensor fields of the node and of its sources it reads
(`reads`, `source_reads`).  A plan takes over the step of a node of the previous graph
whose step key matches (stepkeys.py), so the key must cover everything any kernel reads:
the key fields are the union of these declarations, and tests/test_registry.py runs every
kernel on recording tensors to check that no kernel reads what it did not declare.
Values are computed from the sources' views and stored through the destination's view, so
strides, permutations and in-place ops behave as in ggml.  Steps run inside the plan's
np.errstate(all="ignore"): inf and nan propagate silently, as they do in C.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ggml_rpc_spec.protocol.ggml import GgmlTables
from ggml_rpc_spec.protocol.rules import Rule, rule

from .errors import UNSUPPORTED, ExecutionError
from .numerics import DEFAULT_NUMERICS, Numerics
from .tensors import ELEMENT_DTYPES, DequantCache, TensorRef, strided_view

# The rules kernels cite when they refuse a node (looked up once: a misspelt key fails at import).
OP_PARAMS = rule("exec.op-params")
VIEW_PARAMS = rule("exec.view-params")
ROWS_IN_RANGE = rule("exec.rows-in-range")
EXPERT_IDS = rule("exec.expert-ids")
STATE_IDS = rule("exec.state-ids")

Step = Callable[[], None]
# A batch kernel's steps are calls: (function, its arguments), made in C by zip without a
# closure or partial per node; a plan runs every step as a call, a kernel's Step as (step, ()).
Call = tuple[Callable, tuple]
Taken = tuple[np.ndarray, list]  # a batch kernel's answer: the nodes it takes (indices into its rows), their calls

# rpc_tensor fields a kernel may consult.  "memory" stands for the fields that place a tensor
# in memory and give its layout: type, buffer, ne, nb, data.  `name` only ever appears in
# messages.  Links (src, view_src) are followed by the binder, not by kernels.
MEMORY = ("type", "buffer", "ne", "nb", "data")
READABLE = frozenset(MEMORY + ("op", "op_params", "flags", "name"))
NODE_READS = frozenset(MEMORY + ("op", "op_params", "name"))  # the default: the node itself, whole
SOURCE_READS = frozenset(MEMORY)  # the default: where and what each source is


@dataclass(frozen=True)
class Kernel:
    ops: tuple[str, ...]
    build: Callable[[TensorRef, "ExecContext"], Step | None]
    reads: frozenset[str] = NODE_READS
    source_reads: frozenset[str] = SOURCE_READS

    def __post_init__(self) -> None:
        unknown = (self.reads | self.source_reads) - READABLE
        assert not unknown, f"kernel of {self.ops} declares unknown fields {sorted(unknown)}"


class Kernels:
    """The kernels of one op family module, declared with its decorators.  Each family has
    its own; executor.ops joins them into the one table, so no kernel exists by the side
    effect of an import."""

    def __init__(self) -> None:
        self.kernels: dict[str, Kernel] = {}
        self.batched: dict[str, Callable[..., Taken]] = {}

    def kernel(self, *ops: str, reads: frozenset[str] = NODE_READS, source_reads: frozenset[str] = SOURCE_READS):
        """Declare `build` as the kernel of `ops`, reading the declared fields."""
        def declare(build):
            entry = Kernel(ops, build, frozenset(reads), frozenset(source_reads))
            for op in ops:
                assert op not in self.kernels, f"two kernels for {op}"
                self.kernels[op] = entry
            return build

        return declare

    def batch(self, *ops: str):
        """Declare a batch kernel for `ops`; each op must also have a per-node kernel, whose
        declared reads cover what the batch kernel reads."""
        def declare(batch):
            for op in ops:
                self.batched[op] = batch
            return batch

        return declare


def key_fields(kernels: dict[str, Kernel]) -> tuple[frozenset[str], frozenset[str]]:
    """What a step key must cover: (node fields, source fields) read by any of `kernels`."""
    node: set[str] = set()
    source: set[str] = set()
    for entry in kernels.values():
        node |= entry.reads
        source |= entry.source_reads
    return frozenset(node), frozenset(source)


@dataclass
class ExecContext:
    ggml: GgmlTables
    cache: DequantCache
    numerics: Numerics = DEFAULT_NUMERICS  # "ggml": round activations like ggml's CPU backend; "float": plain float32
    memo: dict = field(default_factory=dict)  # values shared by the nodes of one run (cleared per run)


# -- checks every kernel uses ---------------------------------------------------------------------


def require(condition: bool | np.bool_, node: TensorRef, message: str, *args, rule: Rule = UNSUPPORTED) -> None:
    """Raise ExecutionError naming the node (and the broken rule) unless `condition`;
    `message` is formatted with `args` only then, since kernels are built for every node of
    every graph."""
    if not condition:
        types = ", ".join(s.kind.name for s in node.srcs if s is not None)
        raise ExecutionError(f"{node.label} {node.name!r} ({node.kind.name} <- {types or 'no sources'}): "
                             + message.format(*args), rule=rule)


def in_range(node: TensorRef, index: np.ndarray, limit: int, what: str, rule: Rule) -> None:
    """Raise ExecutionError under `rule` unless every value of `index` (read from a tensor at
    run time: data, not shape) lies in [0, limit); before anything is read through it."""
    if index.size and (index.min() < 0 or index.max() >= limit):
        bad = index[(index < 0) | (index >= limit)][0]
        raise ExecutionError(f"{node.label} {node.name!r}: {what} {int(bad)} outside [0, {limit})", rule=rule)


def readable(node: TensorRef, *tensors: TensorRef) -> None:
    for tensor in tensors:
        require(tensor.kind.name in ELEMENT_DTYPES or tensor.quantized, node, "cannot read {}", tensor.kind.name)
        require(tensor.buffer is not None, node, "{.name!r} has no buffer on this server: nothing to read", tensor)


def float_like(node: TensorRef, *tensors: TensorRef) -> None:
    for tensor in tensors:
        require(tensor.kind.name in ("F32", "F16", "BF16"), node, "{} is not a float type here", tensor.kind.name)


def as_ggml_reads(node: TensorRef, tensor: TensorRef, *, flat: bool = False) -> np.ndarray:
    """`tensor`'s elements as ggml's CPU reads them: rows of ne0 consecutive elements from
    each row start (data + i1*nb1 + i2*nb2 + i3*nb3), shape (ne3, ne2, ne1, ne0); with
    `flat`, row r at data + r*nb1 for r < ne1*ne2*ne3, shape (rows, ne0).  Refused when
    those bytes would leave the tensor's buffer."""
    require(tensor.kind.name in ("F32", "F16", "BF16", "I32"), node, "cannot read {} rows", tensor.kind.name)
    require(tensor.buffer is not None, node, "{.name!r} has no buffer on this server: nothing to read", tensor)
    buffer = tensor.live_buffer()  # there is one: required above
    size = tensor.dtype.itemsize
    ne, nb = tensor.ne, tensor.nb
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    if flat:
        shape, strides = (ne[1] * ne[2] * ne[3], ne[0]), (nb[1], size)
    else:
        shape, strides = tensor.shape, (nb[3], nb[2], nb[1], size)
        if nb[0] == size:
            return tensor.view()
    if 0 in shape:
        return np.zeros(shape, tensor.dtype)  # nothing to read or write
    start = tensor.data - buffer.base
    end = start + size * shape[-1] + sum((n - 1) * s for n, s in zip(shape[:-1], strides[:-1], strict=True))
    require(0 <= start and end <= min(buffer.size, len(buffer.memory)), node,
            "the rows of {.name!r} read as ggml reads them (nb0 = element size) leave its buffer", tensor)
    return strided_view(buffer.memory, tensor.dtype, start, shape, strides)


def dense_rows(node: TensorRef, *tensors: TensorRef) -> None:
    """Tensors ggml's CPU walks with consecutive elements in a row (it asserts nb0 == the
    element size, or writes rows as consecutive runs whatever nb0 says)."""
    for tensor in tensors:
        require(tensor.nb[0] == tensor.kind.type_size, node, "{.name!r} must have consecutive elements in its rows "
                "(nb0 {} != {})", tensor, tensor.nb[0], tensor.kind.type_size)


def packed(tensor: TensorRef, from_dim: int = 0, upto: int = 4) -> bool:
    """ggml_is_contiguous (from_dim 0), or ggml_is_contiguous_1 (from_dim 1: rows of consecutive
    elements, dimension 1 at any stride, dimensions 2 and 3 packed after it); with `upto`,
    only the dimensions below it count."""
    expected = tensor.kind.type_size * (tensor.ne[0] // tensor.kind.block_size)
    ok = tensor.nb[0] == tensor.kind.type_size or tensor.ne[0] == tensor.kind.block_size
    for dim in range(1, upto):
        if tensor.ne[dim] != 1:
            ok = ok and (dim <= from_dim or tensor.nb[dim] == expected)
            expected = tensor.ne[dim] * (tensor.nb[dim] if dim <= from_dim else expected)
    return ok


def contiguous(node: TensorRef, *tensors: TensorRef, from_dim: int = 0) -> None:
    """ggml's CPU asserts these tensors `packed` (it aborts otherwise)."""
    for tensor in tensors:
        require(packed(tensor, from_dim), node, "{.name!r} must be contiguous{} (ne {}, nb {}): ggml's CPU asserts it",
                tensor, " past dimension 1" if from_dim else "", tensor.ne, tensor.nb)


def same_shape(node: TensorRef, a: TensorRef, b: TensorRef) -> None:
    require(a.ne == b.ne, node, "shape {} differs from {}", a.ne, b.ne)


def repeat(values: np.ndarray, shape: tuple[int, ...], node: TensorRef) -> np.ndarray:
    """ggml's implicit repeat: each dimension of `values` divides the target's."""
    reps = []
    for have, want in zip(values.shape, shape, strict=True):
        require(have > 0 and want % have == 0, node, "cannot repeat {} to {}", values.shape, shape)
        reps.append(want // have)
    if all(r == 1 or h == 1 for r, h in zip(reps, values.shape, strict=True)):
        return np.broadcast_to(values, shape)
    return np.tile(values, reps)


def map_rows(node: TensorRef, function, *sources: TensorRef) -> Step:
    """The step of an op whose ggml kernel walks rows r < ne1*ne2*ne3 at data + r*nb1 of the
    result and of every source (nb2 and nb3 unread: `as_ggml_reads` with flat), computing
    `function` of the sources' float32 rows."""
    float_like(node, node, *sources)
    for source in sources:
        same_shape(node, node, source)
    dense_rows(node, node, *sources)
    rows, out = [as_ggml_reads(node, s, flat=True) for s in sources], as_ggml_reads(node, node, flat=True)

    def run():
        out[...] = function(*(r.astype(np.float32) for r in rows)).astype(out.dtype)

    return run


def map_values(node: TensorRef, ctx: "ExecContext", function) -> Step:
    """The step of an op that maps src0's values to the node's, element by element."""
    src = node.src(0)
    float_like(node, src, node)
    same_shape(node, node, src)

    def run():
        node.write(function(src.read(ctx.cache)).astype(np.float32))

    return run


def optional_src(node: TensorRef, index: int) -> TensorRef | None:
    """src[index], or None when the node leaves that slot empty."""
    return node.srcs[index] if index < len(node.srcs) else None


__all__ = ["EXPERT_IDS", "OP_PARAMS", "ROWS_IN_RANGE", "STATE_IDS", "UNSUPPORTED", "VIEW_PARAMS", "ExecContext",
           "ExecutionError", "Kernel", "Kernels", "Call", "Step", "Taken", "as_ggml_reads", "contiguous",
           "dense_rows", "float_like", "key_fields", "map_rows", "map_values", "optional_src", "packed", "readable",
           "repeat", "require", "same_shape"]
