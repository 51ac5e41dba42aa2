"""Arithmetic element by element: binary ops with ggml's repeat of src1, ADD1, ADD_ID, SCALE,
CLAMP, LEAKY_RELU, SQR and friends.

Values are computed in float32 from the sources' values and rounded once to the result's
type, as ggml's CPU backend does per element; results are stored through the node's view,
so permuted or strided operands and in-place nodes (the node's memory is a source's) behave
as in ggml.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ggml_rpc_spec.protocol.ops import spec_for
from ggml_rpc_spec.protocol.versions import parse_version

from ..batch import plain_f32, ufunc_steps
from ..registry import (EXPERT_IDS, ExecContext, Kernels, Step, Taken, contiguous, float_like, in_range, map_rows,
                        map_values, readable, require, same_shape)
from ..tensors import QUANTIZABLE, TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)

F32 = np.float32
SCALE = spec_for("SCALE")
BINARY = {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply, "DIV": np.divide}


def _operand(node: TensorRef, tensor: TensorRef) -> None:
    """A source read as float32: a float type, or a quantized one (dequantized)."""
    require(tensor.kind.name in ("F32", "F16", "BF16") or tensor.quantized, node, "cannot compute on {} values",
            tensor.kind.name)
    readable(node, tensor)


# (a, b, result) types ggml's CPU computes a binary op on (binary-ops.cpp); any other aborts it
BINARY_TYPES = frozenset({("F32", "F32", "F32"), ("F16", "F16", "F16"), ("BF16", "BF16", "BF16"),
                          ("BF16", "F32", "BF16"), ("BF16", "F32", "F32"), ("F16", "F32", "F16"),
                          ("F16", "F32", "F32")})


def _binary_types(node: TensorRef, a: TensorRef, b: TensorRef) -> None:
    """The type combinations of BINARY_TYPES; ADD also adds F32 rows to a quantized a of the
    same shape (ggml's add_q_f32)."""
    if node.op == "ADD" and a.quantized:
        require(b.kind.name == "F32" and a.ne == b.ne, node, "a quantized a ({}) takes an F32 b of its shape, not {} {}",
                a.kind.name, b.kind.name, b.ne)
        return
    require((a.kind.name, b.kind.name, node.kind.name) in BINARY_TYPES, node,
            "{} of {} and {} into {} is not computed by ggml", node.op, a.kind.name, b.kind.name, node.kind.name)


def _result(node: TensorRef) -> None:
    """A result written from float32: a float type, or a quantized type gguf can write."""
    require(node.kind.name in ("F32", "F16", "BF16") or node.kind.name in QUANTIZABLE, node, "cannot write {} results",
            node.kind.name)


def _tiling(full: tuple[int, ...], part: tuple[int, ...]):
    """ggml repeats `part` over `full` (NumPy order) by tiling.  A dimension where `part` has
    size 1 or the full size broadcasts as is; any other one is split into (repeats, size) in
    both, the part's repeats being 1.  None when no dimension needs splitting."""
    if all(p in (1, f) for f, p in zip(full, part, strict=True)):
        return None
    big, small = [], []
    for f, p in zip(full, part, strict=True):
        big.append((f,) if p in (1, f) else (f // p, p))
        small.append((p,) if p in (1, f) else (1, p))
    return big, small


def _split(values: np.ndarray, dims) -> np.ndarray:
    """`values` with each dimension split as `dims` says (a view: splitting never copies)."""
    shape, strides = [], []
    for size, stride, parts in zip(values.shape, values.strides, dims, strict=True):
        if len(parts) == 1:
            shape.append(size)
            strides.append(stride)
        else:
            shape += parts
            strides += [parts[1] * stride, stride]
    return as_strided(values, shape, strides, writeable=values.flags.writeable)


@kernels.batch(*BINARY)
def batch_binary(binder, op: str, rows: np.ndarray, ctx: ExecContext) -> Taken:
    """All float32, src0 the node's shape and src1 broadcasting to it: one ufunc call over
    views fixed now (views read the buffers' current bytes at every run)."""
    a, b = binder.sources[rows, 0], binder.sources[rows, 1]
    ne, ne_a, ne_b = binder.ne[rows], binder.ne[a], binder.ne[b]
    ok = (plain_f32(binder, rows, a, b) & (ne == ne_a).all(axis=1) & ((ne_b == ne_a) | (ne_b == 1)).all(axis=1)
          & (ne > 0).all(axis=1))
    flat = ok & (ne_b == ne_a).all(axis=1) & binder.packed[rows] & binder.packed[a] & binder.packed[b]
    return ufunc_steps(binder, BINARY[op], rows, ok, flat, (a, b))


@kernels.kernel(*BINARY)
def build_binary(node: TensorRef, ctx: ExecContext) -> Step | None:
    """result = a op repeat(b): each of b's dimensions divides a's (ggml_can_repeat; an empty
    b only with an empty a)."""
    a, b = node.src(0), node.src(1)
    _operand(node, a)
    _operand(node, b)
    _result(node)
    _binary_types(node, a, b)
    same_shape(node, node, a)
    if b.n_elements == 0 or a.n_elements == 0:
        require(a.n_elements == 0, node, "an empty src1 {} does not repeat to {}", b.ne, a.ne)
        return None
    require(all(want % have == 0 for have, want in zip(b.ne, a.ne, strict=True)), node,
            "src1 {} does not repeat to {}", b.ne, a.ne)
    function = BINARY[node.op]
    tiling = _tiling(node.shape, b.shape)
    direct = node.kind.name == "F32"

    def run():
        x = a.read(ctx.cache)
        y = b.read(ctx.cache)
        if tiling is not None:
            x, y = _split(x, tiling[0]), _split(y, tiling[1])
        if direct:
            out = node.view()
            function(x, y, out=out if tiling is None else _split(out, tiling[0]))
        else:
            node.write(function(x, y).reshape(node.shape))

    return run


@kernels.kernel("ADD1")
def build_add1(node: TensorRef, ctx: ExecContext) -> Step | None:
    """result = a + the single value of b."""
    a, b = node.src(0), node.src(1)
    _operand(node, a)
    float_like(node, b)
    readable(node, b)
    _result(node)
    same_shape(node, node, a)
    require(b.ne == (1, 1, 1, 1), node, "src1 {} is not a single value", b.ne)
    if not node.n_elements:
        return None

    def run():
        node.write(a.read(ctx.cache) + b.read(ctx.cache).reshape(()))

    return run


@kernels.kernel("ADD_ID")
def build_add_id(node: TensorRef, ctx: ExecContext) -> Step | None:
    """result[i3, i2, i1, :] = a[i3, i2, i1, :] + b[0, 0, ids[0, 0, i2, i1], :], every id checked
    against b's rows before any is used."""
    a, b, ids = node.src(0), node.src(1), node.src(2)
    float_like(node, a, b, node)
    readable(node, a, b)
    require(ids.kind.name == "I32", node, "expert ids must be I32, not {}", ids.kind.name)
    readable(node, ids)
    same_shape(node, node, a)
    require(b.ne[0] == a.ne[0], node, "bias rows of {} elements do not match rows of {}", b.ne[0], a.ne[0])
    require(ids.ne[0] == a.ne[1] and ids.ne[1] == a.ne[2], node, "ids {} do not cover a's dims 1, 2 of {}",
            ids.ne, a.ne)
    if not node.n_elements:
        return None
    require(ids.ne[2] > 0 and ids.ne[3] > 0 and b.ne[2] > 0 and b.ne[3] > 0, node,
            "ids {} and b {} must have a first plane to read", ids.ne, b.ne)
    experts = b.ne[1]

    def run():
        chosen = ids.view()[0, 0]  # (a2, a1)
        in_range(node, chosen, experts, "expert id", EXPERT_IDS)
        bias = b.read(ctx.cache)[0, 0]  # (experts, n)
        node.write(a.read(ctx.cache) + bias[chosen])

    return run


ELEMENTWISE = {"SQR": np.square, "SQRT": np.sqrt, "LOG": np.log, "SIN": np.sin, "COS": np.cos}


def _mapped(node: TensorRef, ctx: ExecContext, function) -> Step | None:
    step = map_values(node, ctx, function)
    return step if node.n_elements else None


@kernels.kernel(*ELEMENTWISE)
def build_elementwise(node: TensorRef, ctx: ExecContext) -> Step | None:
    return _mapped(node, ctx, ELEMENTWISE[node.op])


@kernels.batch("SCALE")
def batch_scale(binder, op: str, rows: np.ndarray, ctx: ExecContext) -> Taken:
    """float32 in and out, same shape, no bias: one multiply over views fixed now."""
    a = binder.sources[rows, 0]
    words = binder.op_params[rows]
    scale, bias = SCALE.column(words, "s"), SCALE.column(words, "b")
    ok = (plain_f32(binder, rows, a) & (binder.ne[rows] == binder.ne[a]).all(axis=1) & (bias == 0)
          & (binder.ne[rows] > 0).all(axis=1))
    ok &= binder.packed[a]  # ggml asserts a contiguous source: build_scale refuses the others
    flat = ok & binder.packed[rows]
    return ufunc_steps(binder, np.multiply, rows, ok, flat, (a,), scale)


@kernels.kernel("SCALE")
def build_scale(node: TensorRef, ctx: ExecContext) -> Step | None:
    """F32, and BF16 after 3.6.1's ggml; ggml's CPU aborts on F16."""
    allowed = ("F32",) if parse_version(ctx.ggml.release) <= (3, 6, 1) else ("F32", "BF16")
    for tensor in (node, node.src(0)):
        require(tensor.kind.name in allowed, node, "SCALE takes {} here, not {}", " or ".join(allowed),
                tensor.kind.name)
    p = node.params()
    scale, bias = F32(p.s), F32(p.b)
    contiguous(node, node.src(0))
    return _mapped(node, ctx, lambda x: x * scale + bias if bias != 0 else x * scale)


@kernels.kernel("CLAMP")
def build_clamp(node: TensorRef, ctx: ExecContext) -> Step | None:
    """MAX(MIN(x, max), min) as C's macros compare: a NaN becomes max.  ggml steps from row to
    row by nb1 alone (map_rows), as LEAKY_RELU does."""
    p = node.params()
    low, high = F32(p.min), F32(p.max)

    def clamp(x):
        below = np.where(x < high, x, high)
        return np.where(below > low, below, low)

    return map_rows(node, clamp, node.src(0)) if node.n_elements else None


@kernels.kernel("LEAKY_RELU")
def build_leaky_relu(node: TensorRef, ctx: ExecContext) -> Step | None:
    """x's positive part plus slope times its negative part (a NaN gives 0, as in ggml)."""
    slope = F32(node.params().slope)
    return map_rows(node, lambda x: np.where(x > 0, x, F32(0)) + slope * np.where(x < 0, x, F32(0)),
                    node.src(0)) if node.n_elements else None
