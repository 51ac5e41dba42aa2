"""Op kernels: ggml's CPU semantics in NumPy, one function per op family.

Each kernel is `build(node, ctx) -> step`: it validates everything that can be validated
before running (types, shapes, parameters) and raises ExecutionError for what it cannot
compute, then returns a closure that does the work.  A GRAPH_RECOMPUTE runs the same
closures again.  Ops whose common case is one ufunc call also have a batch kernel,
`batch(binder, op, rows, ctx) -> (taken, steps)`, that checks all nodes of the op at once
with NumPy and builds the steps of those it takes (`taken`: indices into `rows`) in one
go; the nodes it does not take go to `build`.
Values are computed in float32 from the sources' views and stored through the destination's
view, so strides, permutations and in-place ops behave as in ggml.
Steps run inside the plan's np.errstate(all="ignore"): inf and nan propagate silently, as
they do in C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
import itertools
from typing import Callable

import numpy as np

from protocol.ggml import TYPE_BY_NAME, GgmlTables
from protocol.tensor import contiguous_strides

from .errors import ExecutionError
from .numerics import ROUNDING, WITH_MINS, block_mins, q8_1_sum_correction
from .tensors import ELEMENT_DTYPES, DequantCache, TensorRef, dequantize, quantize

Step = Callable[[], None]
KERNELS: dict[str, Callable[[TensorRef, "ExecContext"], Step | None]] = {}
Taken = tuple[np.ndarray, list]  # a batch kernel's answer: the nodes it takes (indices into its rows), their steps
BATCHED: dict[str, Callable[..., Taken]] = {}
NO_COMPUTE = ("NONE", "RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE")


@dataclass
class ExecContext:
    ggml: GgmlTables
    cache: DequantCache
    numerics: str = "float"  # "float": plain float32 math; "ggml": round activations like ggml's CPU backend
    memo: dict = field(default_factory=dict)  # values shared by the nodes of one run (cleared per run)


def _registry(table: dict):
    def names(*ops: str):
        def register(build):
            for op in ops:
                table[op] = build
            return build

        return register

    return names


kernel, batch_kernel = _registry(KERNELS), _registry(BATCHED)


def require(condition: bool, node: TensorRef, message: str, *args) -> None:
    """Raise ExecutionError naming the node unless `condition`; `message` is formatted with
    `args` only then, since kernels are built for every node of every graph."""
    if not condition:
        types = ", ".join(s.kind.name for s in node.srcs if s is not None)
        raise ExecutionError(f"{node.op} {node.name!r} ({node.kind.name} <- {types or 'no sources'}): "
                             + message.format(*args))


def readable(node: TensorRef, *tensors: TensorRef) -> None:
    for tensor in tensors:
        require(tensor.kind.name in ELEMENT_DTYPES or tensor.quantized, node, "cannot read {}", tensor.kind.name)
        require(tensor.buffer is not None, node, "{!r} has no buffer on this server: nothing to read", tensor.name)


def float_like(node: TensorRef, *tensors: TensorRef) -> None:
    for tensor in tensors:
        require(tensor.kind.name in ("F32", "F16", "BF16"), node, "{} is not a float type here", tensor.kind.name)


def same_shape(node: TensorRef, a: TensorRef, b: TensorRef) -> None:
    require(a.ne == b.ne, node, "shape {} differs from {}", a.ne, b.ne)


def repeat(values: np.ndarray, shape: tuple[int, ...], node: TensorRef) -> np.ndarray:
    """ggml's implicit repeat: each dimension of `values` divides the target's."""
    reps = []
    for have, want in zip(values.shape, shape):
        require(have > 0 and want % have == 0, node, "cannot repeat {} to {}", values.shape, shape)
        reps.append(want // have)
    if all(r == 1 or h == 1 for r, h in zip(reps, values.shape)):
        return np.broadcast_to(values, shape)
    return np.tile(values, reps)


@batch_kernel(*NO_COMPUTE)
def batch_no_compute(binder, op: str, rows: np.ndarray, ctx: ExecContext) -> Taken:
    return np.arange(len(rows)), [None] * len(rows)


def plain_f32(binder, rows: np.ndarray, *operands: np.ndarray) -> np.ndarray:
    """Which nodes (`rows`) and their operand rows are all float32, present and in a buffer:
    the nodes a batch kernel can run on plain views.  (A tensor without a buffer has no
    memory here; the per-node kernel reports it.)"""
    f32 = TYPE_BY_NAME["F32"].value
    ok = (binder.types[rows] == f32) & (binder.handles[rows] != 0)
    for operand in operands:
        ok &= (operand >= 0) & (binder.types[operand] == f32) & (binder.handles[operand] != 0)
    return ok


def ufunc_steps(binder, function, rows: np.ndarray, ok: np.ndarray, flat: np.ndarray, sources,
                scalars: np.ndarray | None = None) -> Taken:
    """Steps `function(*sources, [scalar,] out)` for the nodes `ok` (a batch kernel's answer):
    over 1-D slices where `flat` (every operand packed, all of one shape), otherwise over
    strided views, where the ufunc broadcasts a source of size 1 as ggml repeats it."""
    taken, steps = [], []
    for mask, views in ((flat, binder.flat), (ok & ~flat, binder.views)):
        at = np.flatnonzero(mask)
        columns = views(*(source[at] for source in sources), rows[at])
        if scalars is not None:
            columns.insert(-1, scalars[at])
        taken.append(at)
        # partial(function, *operands, out): `out` given positionally is cheaper to call
        steps += map(partial, itertools.repeat(function), *columns)
    return np.concatenate(taken), steps


# -- copies -------------------------------------------------------------------------------------


@kernel("DUP", "CONT", "CPY")
def build_copy(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    readable(node, src)
    require(src.n_elements == node.n_elements, node, "element counts differ")
    if not (src.quantized or node.quantized):
        def run():  # typed copy: integers never pass through float
            node.view()[...] = src.view().reshape(node.shape)
    else:
        def run():
            node.write(src.read(ctx.cache).reshape(node.shape))
    return run


@kernel("ACC", "SET")
def build_acc(node: TensorRef, ctx: ExecContext) -> Step:
    """ACC: dst = a, then a strided window of dst += b.  SET: the window = b.
    op_params: nb1, nb2, nb3, offset (bytes), inplace."""
    a, b = node.src(0), node.src(1)
    float_like(node, a, b, node)
    same_shape(node, node, a)
    require(all(list(t.nb) == contiguous_strides(t.kind.type_size, t.kind.block_size, t.ne) for t in (node, a)),
            node, "destination and src0 must be contiguous (as ggml requires)")
    nb1, nb2, nb3, offset = (node.param_i32(i) for i in range(4))
    element = node.nb[0]
    require(min(nb1, nb2, nb3, offset) >= 0, node, "negative stride or offset")
    require(offset % element == 0 and nb1 % element == 0 and nb2 % element == 0 and nb3 % element == 0, node,
            "window strides must be multiples of the element size")
    last = offset + (b.ne[0] - 1) * element + (b.ne[1] - 1) * nb1 + (b.ne[2] - 1) * nb2 + (b.ne[3] - 1) * nb3
    require(b.n_elements == 0 or last < node.n_elements * element, node,
            "window (offset {}, strides {}/{}/{}) reaches past the destination", offset, nb1, nb2, nb3)
    accumulate = node.op == "ACC"

    def run():
        flat = a.read(ctx.cache).reshape(-1).copy()  # contiguous: element i sits at byte i * element
        window = np.lib.stride_tricks.as_strided(
            flat[offset // element:], shape=b.shape,
            strides=(nb3 // element * 4, nb2 // element * 4, nb1 // element * 4, 4), writeable=True)
        window[...] = window + b.read(ctx.cache) if accumulate else b.read(ctx.cache)
        node.write(flat.reshape(node.shape))

    return run


# -- elementwise --------------------------------------------------------------------------------

BINARY = {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply, "DIV": np.divide}


@batch_kernel(*BINARY)
def batch_binary(binder, op: str, rows: np.ndarray, ctx: ExecContext) -> Taken:
    """All float32, src0 the node's shape and src1 broadcasting to it: one ufunc call over
    views fixed now (views read the buffers' current bytes at every run)."""
    a, b = binder.sources[rows, 0], binder.sources[rows, 1]
    ne, ne_a, ne_b = binder.ne[rows], binder.ne[a], binder.ne[b]
    ok = plain_f32(binder, rows, a, b) & (ne == ne_a).all(axis=1) & ((ne_b == ne_a) | (ne_b == 1)).all(axis=1)
    flat = ok & (ne_b == ne_a).all(axis=1) & binder.packed[rows] & binder.packed[a] & binder.packed[b]
    return ufunc_steps(binder, BINARY[op], rows, ok, flat, (a, b))


@kernel(*BINARY)
def build_binary(node: TensorRef, ctx: ExecContext) -> Step:
    a, b = node.src(0), node.src(1)
    readable(node, a, b)
    same_shape(node, node, a)
    require(all(have > 0 and want % have == 0 for have, want in zip(b.ne, a.ne)), node,
            "src1 {} does not repeat to {}", b.ne, a.ne)
    function = BINARY[node.op]
    direct = node.kind.name == "F32"

    def run():
        x = a.read(ctx.cache)
        y = b.read(ctx.cache)
        if y.shape != x.shape:
            y = repeat(y, node.shape, node)
        if direct:
            function(x, y, out=node.view())
        else:
            node.write(function(x, y))

    return run


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to float32 precision (Abramowitz & Stegun 7.1.26 is too coarse; use the
    complementary form with a rational Chebyshev fit, |error| < 1.2e-7)."""
    t = 1.0 / (1.0 + 0.5 * np.abs(x.astype(np.float64)))
    poly = -x.astype(np.float64) ** 2 - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    result = 1.0 - t * np.exp(poly)
    return np.where(x >= 0, result, -result).astype(np.float32)


def gelu_f32(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.float32(0.7978845608) * x * (1.0 + np.float32(0.044715) * x * x)))


def gelu_table(x: np.ndarray) -> np.ndarray:
    """ggml's CPU GELU: through an FP16 lookup table, exact outside [-10, 10]."""
    x16 = x.astype(np.float16).astype(np.float32)
    looked_up = gelu_f32(x16).astype(np.float16).astype(np.float32)
    return np.where(x <= -10.0, np.float32(0), np.where(x >= 10.0, x, looked_up))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


UNARY = {
    "ABS": np.abs, "SGN": np.sign, "NEG": np.negative,
    "STEP": lambda x: (x > 0).astype(np.float32),
    "TANH": np.tanh, "ELU": lambda x: np.where(x > 0, x, np.expm1(x)),
    "RELU": lambda x: np.where(x > 0, x, np.float32(0)), "SIGMOID": sigmoid,
    "GELU": gelu_table, "GELU_QUICK": lambda x: x * (1.0 / (1.0 + np.exp(np.float32(-1.702) * x))),
    "GELU_ERF": lambda x: 0.5 * x * (1.0 + _erf(x * np.float32(0.70710678))),
    "SILU": lambda x: x / (1.0 + np.exp(-x)),
    "HARDSWISH": lambda x: x * np.minimum(1.0, np.maximum(0.0, (x + 3.0) / 6.0)),
    "HARDSIGMOID": lambda x: np.minimum(1.0, np.maximum(0.0, (x + 3.0) / 6.0)),
    "EXP": np.exp, "EXPM1": lambda x: np.exp(x) - 1.0,
    "SOFTPLUS": lambda x: np.where(x > 20.0, x, np.log(1.0 + np.exp(np.minimum(x, 20.0)))),
    "FLOOR": np.floor, "CEIL": np.ceil, "ROUND": lambda x: np.trunc(x + np.copysign(0.5, x)), "TRUNC": np.trunc,
}
ELEMENTWISE = {"SQR": np.square, "SQRT": np.sqrt, "LOG": np.log, "SIN": np.sin, "COS": np.cos}


def _map_values(node: TensorRef, ctx: ExecContext, function) -> Step:
    src = node.src(0)
    float_like(node, src, node)
    same_shape(node, node, src)

    def run():
        node.write(function(src.read(ctx.cache)).astype(np.float32))

    return run


@kernel(*ELEMENTWISE)
def build_elementwise(node: TensorRef, ctx: ExecContext) -> Step:
    return _map_values(node, ctx, ELEMENTWISE[node.op])


def sub_op(node: TensorRef, names: tuple[str, ...], supported: dict) -> str:
    """The sub-op named by op_params[0] (UNARY, GLU), checked against the supported table;
    the node's op becomes e.g. "GLU(SWIGLU)" for messages."""
    index = node.param_i32(0)
    name = names[index] if 0 <= index < len(names) else None
    require(name in supported, node, "{} op {} is not supported", node.op.lower(), name or index)
    node.op = f"{node.op}({name})"
    return name


@kernel("UNARY")
def build_unary(node: TensorRef, ctx: ExecContext) -> Step:
    return _map_values(node, ctx, UNARY[sub_op(node, ctx.ggml.unary_ops, UNARY)])


@batch_kernel("SCALE")
def batch_scale(binder, op: str, rows: np.ndarray, ctx: ExecContext) -> Taken:
    """float32 in and out, same shape, no bias: one multiply over views fixed now."""
    a = binder.sources[rows, 0]
    params = binder.op_params[rows, :2].view(np.float32)
    ok = plain_f32(binder, rows, a) & (binder.ne[rows] == binder.ne[a]).all(axis=1) & (params[:, 1] == 0)
    flat = ok & binder.packed[rows] & binder.packed[a]
    return ufunc_steps(binder, np.multiply, rows, ok, flat, (a,), params[:, 0])


@kernel("SCALE")
def build_scale(node: TensorRef, ctx: ExecContext) -> Step:
    scale, bias = np.float32(node.param_f32(0)), np.float32(node.param_f32(1))
    return _map_values(node, ctx, lambda x: x * scale + bias if bias != 0 else x * scale)


def _glu_inputs(node: TensorRef) -> Callable:
    """(x, gate) for a GLU node: src0 and src1 (split form), or the two halves of src0's
    rows (fused form; `swapped` exchanges them)."""
    a, b = node.src(0), node.srcs[1] if len(node.srcs) > 1 else None
    float_like(node, a, node)
    if b is not None:
        float_like(node, b)
        same_shape(node, a, b)
        same_shape(node, node, a)
        return lambda ctx: (a.read(ctx.cache), b.read(ctx.cache))
    require(a.ne[0] == 2 * node.ne[0] and a.ne[1:] == node.ne[1:], node, "fused GLU needs src0 rows twice as long")
    half, swapped = node.ne[0], node.param_i32(1) != 0

    def halves(ctx):
        values = a.read(ctx.cache)
        x, g = values[..., :half], values[..., half:]
        return (g, x) if swapped else (x, g)

    return halves


def _swiglu_oai(node: TensorRef):
    alpha, limit = np.float32(node.param_f32(2)), np.float32(node.param_f32(3))

    def glu(x, g):
        x = np.minimum(x, limit)
        g = np.clip(g, -limit, limit)
        return x / (1.0 + np.exp(alpha * -x)) * (g + 1.0)

    return glu


def _swiglu_clamp(node: TensorRef):
    limit = np.float32(node.param_f32(3))

    def glu(x, g):
        x = np.minimum(x, limit)
        return x / (1.0 + np.exp(-x)) * np.clip(g, -limit, limit)

    return glu


GLU = {
    "REGLU": lambda node: lambda x, g: np.where(x > 0, x, np.float32(0)) * g,
    "GEGLU": lambda node: lambda x, g: gelu_table(x) * g,
    "SWIGLU": lambda node: lambda x, g: x / (1.0 + np.exp(-x)) * g,
    "SWIGLU_OAI": _swiglu_oai,
    "GEGLU_ERF": lambda node: lambda x, g: UNARY["GELU_ERF"](x) * g,
    "GEGLU_QUICK": lambda node: lambda x, g: UNARY["GELU_QUICK"](x) * g,
    "SWIGLU_CLAMP": _swiglu_clamp,
}


@kernel("GLU")
def build_glu(node: TensorRef, ctx: ExecContext) -> Step:
    function = GLU[sub_op(node, ctx.ggml.glu_ops, GLU)](node)
    inputs = _glu_inputs(node)

    def run():
        x, g = inputs(ctx)
        node.write(function(x, g).astype(np.float32))

    return run


# -- reductions and normalisation ------------------------------------------------------------------


@kernel("SUM_ROWS", "MEAN")
def build_sum_rows(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    float_like(node, src, node)
    require(node.ne == (1,) + src.ne[1:], node, "result must be one column of src's rows")
    mean = node.op == "MEAN"

    def run():
        total = src.read(ctx.cache).astype(np.float64).sum(axis=-1, keepdims=True)
        node.write((total / src.ne[0] if mean else total).astype(np.float32))

    return run


@kernel("SUM")
def build_sum(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    float_like(node, src, node)
    require(node.n_elements == 1, node, "SUM yields one element")
    return lambda: node.write(np.float32(src.read(ctx.cache).astype(np.float64).sum()))


@kernel("ARGMAX")
def build_argmax(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    float_like(node, src)
    require(node.kind.name == "I32" and node.ne[0] == src.ne[1] and src.ne[2] == src.ne[3] == 1, node,
            "ARGMAX takes a matrix and yields one I32 per row")
    return lambda: node.write(np.argmax(src.read(ctx.cache)[0, 0], axis=-1).astype(np.int32).reshape(node.shape))


@kernel("NORM", "RMS_NORM")
def build_norm(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    float_like(node, src, node)
    same_shape(node, node, src)
    eps = np.float32(node.param_f32(0))
    require(eps >= 0, node, "eps {} is negative", eps)
    n = src.ne[0]
    rms = node.op == "RMS_NORM"

    def run():
        x = src.read(ctx.cache)
        if rms:  # as ggml: sum of squares in double, the rest in float
            mean = (x.astype(np.float64) ** 2).sum(axis=-1, keepdims=True) / n
            node.write(x * (np.float32(1) / np.sqrt(mean.astype(np.float32) + eps)))
        else:
            centered = x - (x.astype(np.float64).sum(axis=-1, keepdims=True) / n).astype(np.float32)
            variance = (centered.astype(np.float64) ** 2).sum(axis=-1, keepdims=True) / n
            node.write(centered * (np.float32(1) / np.sqrt(variance.astype(np.float32) + eps)))

    return run


# -- matrices and rows ---------------------------------------------------------------------------


@kernel("MUL_MAT")
def build_mul_mat(node: TensorRef, ctx: ExecContext) -> Step:
    """dst[i3,i2,i1,i0] = sum_k src0[i3/r3, i2/r2, i0, k] * src1[i3, i2, i1, k] (F32 result)."""
    a, b = node.src(0), node.src(1)
    readable(node, a, b)
    require(a.ne[0] == b.ne[0], node, "inner sizes differ ({} vs {})", a.ne[0], b.ne[0])
    require(b.ne[2] % a.ne[2] == 0 and b.ne[3] % a.ne[3] == 0, node, "src0 does not broadcast over src1")
    require(node.kind.name == "F32" and node.ne == (a.ne[1], b.ne[1], b.ne[2], b.ne[3]), node,
            "result must be F32 [src0 rows, src1 rows, src1 ne2, src1 ne3]")
    r2, r3 = b.ne[2] // a.ne[2], b.ne[3] // a.ne[3]
    rounding = ROUNDING.get(a.kind.name) if ctx.numerics == "ggml" else None
    with_sums = rounding is not None and a.kind.name in WITH_MINS
    flat = a.ne[2] == a.ne[3] == b.ne[2] == b.ne[3] == 1

    def product(inputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """inputs (ne13, ne12, M, K) x weights (ne03, ne02, N, K) -> (ne13, ne12, M, N)."""
        if r3 > 1:
            weights = np.repeat(weights, r3, axis=0)
        grouped = inputs.reshape(b.ne[3], a.ne[2], r2 * b.ne[1], inputs.shape[-1])
        return np.matmul(grouped, weights.swapaxes(-1, -2)).reshape(node.shape)

    def run():
        weights = a.read(ctx.cache)  # (ne03, ne02, N, K)
        raw = b.read(ctx.cache)  # (ne13, ne12, M, K)
        inputs = rounding(raw) if rounding is not None else raw
        target = node.view()
        if flat and target[0, 0].flags.c_contiguous:  # one product, straight into the destination
            np.matmul(inputs[0, 0], weights[0, 0].T, out=target[0, 0])
        else:
            target[...] = product(inputs, weights)
        if with_sums:  # ggml takes these weights' min term from Q8_1's stored block sums
            target += product(q8_1_sum_correction(raw), ctx.cache.get(a, block_mins))

    return run


def _rows_in_range(node: TensorRef, index: np.ndarray, limit: int) -> None:
    if index.size and (index.min() < 0 or index.max() >= limit):
        bad = index[(index < 0) | (index >= limit)][0]
        raise ExecutionError(f"{node.op} {node.name!r}: row index {int(bad)} outside [0, {limit}) [§8.4]")


@kernel("GET_ROWS")
def build_get_rows(node: TensorRef, ctx: ExecContext) -> Step:
    """dst[i12, i11, i10, :] = src0[i12, i11, src1[i12, i11, i10], :]"""
    data, index = node.src(0), node.src(1)
    readable(node, data)
    require(index.kind.name == "I32", node, "indices must be I32")
    require(data.ne[2] == index.ne[1] and data.ne[3] == index.ne[2] and index.ne[3] == 1, node,
            "src0 dims 2, 3 must match src1 dims 1, 2")
    require(node.ne == (data.ne[0], index.ne[0], index.ne[1], index.ne[2]), node, "result shape")
    grid3 = np.arange(index.ne[2])[:, None, None]
    grid2 = np.arange(index.ne[1])[None, :, None]

    def run():
        rows = index.view()[0].astype(np.int64)  # (ne12, ne11, ne10)
        _rows_in_range(node, rows, data.ne[1])
        if data.quantized:
            values = dequantize(data.kind, data.row_bytes()[grid3, grid2, rows])
        else:
            values = data.view()[grid3, grid2, rows]
        node.write(values.reshape(node.shape))

    return run


@kernel("SET_ROWS")
def build_set_rows(node: TensorRef, ctx: ExecContext) -> Step:
    """dst[i03, i02, src1[i03 % ne12, i02 % ne11, i], :] = src0[i03, i02, i, :]"""
    src, index = node.src(0), node.src(1)
    float_like(node, src)
    require(index.kind.name in ("I32", "I64"), node, "indices must be I32 or I64")
    require(src.ne[0] == node.ne[0] and src.ne[2] == node.ne[2] and src.ne[3] == node.ne[3], node,
            "rows of src0 must match the destination")
    require(index.ne[0] == src.ne[1] and src.ne[2] % index.ne[1] == 0 and src.ne[3] % index.ne[2] == 0
            and index.ne[3] == 1, node, "src1 must index every row of src0")
    readable(node, node)
    grid3 = np.arange(src.ne[3])[:, None, None]
    grid2 = np.arange(src.ne[2])[None, :, None]

    def run():
        rows = index.view()[0].astype(np.int64)[np.ix_(np.arange(src.ne[3]) % index.ne[2],
                                                        np.arange(src.ne[2]) % index.ne[1])]
        _rows_in_range(node, rows, node.ne[1])
        values = src.read(ctx.cache)
        if node.quantized:
            node.row_bytes()[grid3, grid2, rows] = quantize(node.kind, values)
        else:
            node.view()[grid3, grid2, rows] = values

    return run


# -- attention ------------------------------------------------------------------------------------


def _alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    if max_bias <= 0:
        return np.ones(n_head, dtype=np.float32)
    n_head_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = np.float32(2.0 ** (-max_bias / n_head_log2))
    m1 = np.float32(2.0 ** (-(max_bias / 2.0) / n_head_log2))
    h = np.arange(n_head)
    return np.where(h < n_head_log2, m0 ** (h + 1), m1 ** (2 * (h - n_head_log2) + 1)).astype(np.float32)


@kernel("SOFT_MAX")
def build_soft_max(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    mask = node.srcs[1] if len(node.srcs) > 1 else None
    sinks = node.srcs[2] if len(node.srcs) > 2 else None
    float_like(node, src, node)
    same_shape(node, node, src)
    scale, max_bias = np.float32(node.param_f32(0)), node.param_f32(1)
    if mask is not None:
        require(mask.kind.name in ("F32", "F16"), node, "mask must be F32 or F16")
        require(mask.ne[0] >= src.ne[0] and mask.ne[1] >= src.ne[1], node, "mask smaller than the rows")
        require(src.ne[2] % mask.ne[2] == 0 and src.ne[3] % mask.ne[3] == 0, node, "mask does not broadcast")
    if sinks is not None:
        require(sinks.kind.name == "F32" and sinks.ne[0] >= src.ne[2], node, "sinks must be F32 [n_head]")
    slopes = _alibi_slopes(src.ne[2], max_bias)[None, :, None, None]

    def run():
        w = src.read(ctx.cache) * scale
        if mask is not None:
            m = mask.read()[:, :, : src.ne[1], : src.ne[0]]
            w = w + slopes * repeat(m, (src.ne[3], src.ne[2], src.ne[1], src.ne[0]), node)
        top = w.max(axis=-1, keepdims=True)
        if sinks is not None:
            sink = sinks.read()[0, 0, 0, : src.ne[2]][None, :, None, None]
            top = np.maximum(top, sink)
        e = np.exp(w - top)
        total = e.astype(np.float64).sum(axis=-1, keepdims=True)
        if sinks is not None:
            total = total + np.exp(sink - top)
        node.write((e * (1.0 / total)).astype(np.float32))

    return run


ROPE_NORMAL, ROPE_NEOX = 0, 2


def rope_cache(positions: np.ndarray, n_dims: int, params: dict, freq_factors: np.ndarray | None) -> tuple:
    """cos and sin (times mscale) per position and rotated pair, in ggml's float32 order of
    operations: theta starts at the position and is multiplied by theta_scale pair by pair
    (a multiplicative accumulate in float32 is exactly that left fold)."""
    f32 = np.float32
    theta_scale = f32(np.power(np.float32(params["freq_base"]), np.float32(-2.0) / np.float32(n_dims)))
    corr = yarn_corr_dims(n_dims, params["n_ctx_orig"], params["freq_base"], params["beta_fast"], params["beta_slow"])
    pairs = n_dims // 2
    ladder = np.full((len(positions), pairs), theta_scale, dtype=np.float32)
    ladder[:, 0] = positions
    thetas = np.multiply.accumulate(ladder, axis=1, dtype=np.float32)
    if freq_factors is not None:
        thetas = thetas / freq_factors[:pairs].astype(np.float32)
    freq_scale, ext_factor = f32(params["freq_scale"]), f32(params["ext_factor"])
    mscale = f32(params["attn_factor"])
    interp = freq_scale * thetas
    if ext_factor != 0:
        i0 = np.arange(pairs) * 2
        y = ((i0 // 2) - f32(corr[0])) / max(f32(0.001), f32(corr[1] - corr[0]))
        ramp = (1 - np.minimum(1, np.maximum(0, y))).astype(np.float32) * ext_factor
        thetas = interp * (1 - ramp) + thetas * ramp
        mscale = f32(mscale * (1.0 + 0.1 * math.log(1.0 / float(freq_scale))))
    else:
        thetas = interp
    return (np.cos(thetas.astype(np.float64)).astype(np.float32) * mscale,
            np.sin(thetas.astype(np.float64)).astype(np.float32) * mscale)


def yarn_corr_dims(n_dims: int, n_ctx_orig: int, base: float, beta_fast: float, beta_slow: float) -> tuple:
    def corr_dim(n_rot: float) -> float:
        return n_dims * math.log(n_ctx_orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    try:
        start = math.floor(corr_dim(beta_fast))
        end = math.ceil(corr_dim(beta_slow))
    except (ValueError, ZeroDivisionError, OverflowError):
        return 0.0, float(n_dims - 1)
    return float(max(0, start)), float(min(n_dims - 1, end))


@kernel("ROPE")
def build_rope(node: TensorRef, ctx: ExecContext) -> Step:
    src, positions = node.src(0), node.src(1)
    freq_factors = node.srcs[2] if len(node.srcs) > 2 else None
    float_like(node, src, node)
    same_shape(node, node, src)
    n_dims, mode = node.param_i32(1), node.param_i32(2)
    offset = node.param_i32(15)
    require(mode in (ROPE_NORMAL, ROPE_NEOX), node, "rope mode {} is not supported (normal 0, neox 2)", mode)
    require(positions.kind.name == "I32" and positions.ne[0] == src.ne[2], node, "positions must be I32 [ne2]")
    require(0 < n_dims <= src.ne[0] and n_dims % 2 == 0, node, "n_dims {} invalid for rows of {}", n_dims, src.ne[0])
    require(0 <= offset and offset % 2 == 0 and offset + n_dims <= src.ne[0], node, "offset {} invalid", offset)
    if freq_factors is not None:
        require(freq_factors.kind.name == "F32" and freq_factors.ne[0] >= n_dims // 2, node, "freq factors")
    params = {"n_ctx_orig": node.param_i32(4), "freq_base": node.param_f32(5), "freq_scale": node.param_f32(6),
              "ext_factor": node.param_f32(7), "attn_factor": node.param_f32(8), "beta_fast": node.param_f32(9),
              "beta_slow": node.param_f32(10)}
    require(params["freq_base"] > 0 and params["freq_scale"] > 0, node, "freq_base and freq_scale must be positive")
    half = n_dims // 2

    memo_key = (n_dims, tuple(sorted(params.items())), freq_factors.data if freq_factors is not None else 0)

    def run():
        x = src.read(ctx.cache)  # (ne3, ne2=positions, ne1=heads, ne0)
        pos = positions.view()[0, 0, 0]
        key = memo_key + (pos.tobytes(),)
        cached = ctx.memo.get(key)  # every layer ropes the same positions
        if cached is None:
            factors = freq_factors.read()[0, 0, 0] if freq_factors is not None else None
            cos, sin = rope_cache(pos, n_dims, params, factors)
            cached = ctx.memo[key] = (cos[None, :, None, :], sin[None, :, None, :])
        cos, sin = cached
        out = x.copy()
        rotated = x[..., offset : offset + n_dims]
        if mode == ROPE_NORMAL:
            x0, x1 = rotated[..., 0::2], rotated[..., 1::2]
            out[..., offset : offset + n_dims : 2] = x0 * cos - x1 * sin
            out[..., offset + 1 : offset + n_dims : 2] = x0 * sin + x1 * cos
        else:
            x0, x1 = rotated[..., :half], rotated[..., half:]
            out[..., offset : offset + half] = x0 * cos - x1 * sin
            out[..., offset + half : offset + n_dims] = x0 * sin + x1 * cos
        node.write(out)

    return run


def _heads_shared(kv: np.ndarray, per_head: int, per_batch: int) -> np.ndarray:
    """K or V spread over the query heads that share it (grouped-query attention); the
    array itself when every query head has its own (a repeat would copy the cache)."""
    if per_head > 1:
        kv = np.repeat(kv, per_head, axis=1)
    return np.repeat(kv, per_batch, axis=0) if per_batch > 1 else kv


@kernel("FLASH_ATTN_EXT")
def build_flash_attn(node: TensorRef, ctx: ExecContext) -> Step:
    q, k, v = node.src(0), node.src(1), node.src(2)
    mask = node.srcs[3] if len(node.srcs) > 3 else None
    sinks = node.srcs[4] if len(node.srcs) > 4 else None
    readable(node, q, k, v)
    float_like(node, q)
    d_k, d_v, n_q, n_head = k.ne[0], v.ne[0], q.ne[1], q.ne[2]
    require(q.ne[0] == d_k and k.ne[1] == v.ne[1], node, "q/k/v sizes disagree")
    require(q.ne[2] % k.ne[2] == 0 and q.ne[2] % v.ne[2] == 0 and q.ne[3] % k.ne[3] == 0 and q.ne[3] % v.ne[3] == 0,
            node, "k/v heads do not divide q heads")
    require(node.kind.name == "F32" and node.ne == (d_v, n_head, n_q, q.ne[3]), node, "result shape")
    if mask is not None:
        require(mask.kind.name in ("F16", "F32") and mask.ne[0] >= k.ne[1] and mask.ne[1] >= n_q, node, "mask shape")
        require(n_head % mask.ne[2] == 0 and q.ne[3] % mask.ne[3] == 0, node, "mask does not broadcast")
    scale, max_bias, softcap = node.param_f32(0), node.param_f32(1), node.param_f32(2)
    if softcap != 0:
        scale /= softcap
    slopes = _alibi_slopes(n_head, max_bias)[None, :, None, None]
    rk2, rk3 = n_head // k.ne[2], q.ne[3] // k.ne[3]
    rv2, rv3 = n_head // v.ne[2], q.ne[3] // v.ne[3]

    def run():
        queries = q.read(ctx.cache)  # (ne3, H, N, D)
        if k.kind.name == "F16":  # ggml converts Q to K's dot type
            queries = queries.astype(np.float16).astype(np.float32)
        keys = _heads_shared(k.read(ctx.cache), rk2, rk3)
        values = _heads_shared(v.read(ctx.cache), rv2, rv3)
        s = np.matmul(queries, keys.swapaxes(-1, -2)) * np.float32(scale)  # (ne3, H, N, n_kv)
        if softcap != 0:
            s = np.float32(softcap) * np.tanh(s)
        if mask is not None:
            m = mask.read()[:, :, :n_q, : k.ne[1]]
            s = s + slopes * repeat(m, s.shape, node)
        top = s.max(axis=-1, keepdims=True)
        if sinks is not None:
            sink = sinks.read()[0, 0, 0, :n_head][None, :, None, None]
            top = np.maximum(top, sink)
        top = np.where(np.isfinite(top), top, 0)
        weights = np.exp(s - top)
        total = weights.sum(axis=-1, keepdims=True)
        if sinks is not None:
            total = total + np.exp(sink - top)
        out = np.matmul(weights, values) / np.where(total == 0, 1, total)
        node.write(out.transpose(0, 2, 1, 3))  # permute(0, 2, 1, 3): dst[i3][query][head]

    return run
