"""Activations (UNARY sub-ops) and gated linear units (GLU sub-ops).

Every function works in float32 on values already converted from the source's type, and
the result is rounded once to the destination's type, as ggml's CPU backend does per
element.  GELU and GELU_QUICK go through ggml's F16 lookup tables: the argument is rounded
to F16 and the looked-up value is an F16 (for an F32 GELU, only inside (-10, 10)).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..registry import ExecContext, Kernels, Step, contiguous, float_like, map_values, optional_src, require, same_shape
from ..tensors import TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)

F32 = np.float32


def _f16(values: np.ndarray) -> np.ndarray:
    """Rounded to F16 (to nearest, ties to even) and back."""
    return values.astype(np.float16).astype(F32)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to float32 precision: the complementary form with a rational Chebyshev fit
    (|error| < 1.2e-7), evaluated in double."""
    x64 = x.astype(np.float64)
    t = 1.0 / (1.0 + 0.5 * np.abs(x64))
    poly = -x64 * x64 - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    result = 1.0 - t * np.exp(poly)
    return np.where(x64 >= 0, result, -result).astype(F32)


def gelu_f32(x: np.ndarray) -> np.ndarray:
    return F32(0.5) * x * (F32(1) + np.tanh(F32(0.7978845608028654) * x * (F32(1) + F32(0.044715) * x * x)))


def gelu_table(x: np.ndarray) -> np.ndarray:
    """ggml's CPU GELU: the F16 table's value at F16(x); an F32 argument at or below -10 gives 0,
    at or above 10 itself (an F16 argument gives the same values there)."""
    looked_up = _f16(gelu_f32(_f16(x)))
    return np.where(x <= -10, F32(0), np.where(x >= 10, x, looked_up))


def gelu_quick_f32(x: np.ndarray) -> np.ndarray:
    return x * (F32(1) / (F32(1) + np.exp(F32(-1.702) * x)))


def gelu_quick_table(x: np.ndarray) -> np.ndarray:
    """ggml's CPU GELU_QUICK (F32 and F16 alike): the F16 table's value at F16(x)."""
    return _f16(gelu_quick_f32(_f16(x)))


def gelu_erf(x: np.ndarray) -> np.ndarray:
    return F32(0.5) * x * (F32(1) + _erf(x * F32(0.7071067811865476)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (F32(1) + np.exp(-x))


def relu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, F32(0))


def _round(x: np.ndarray) -> np.ndarray:
    """C's roundf: half away from zero (x - trunc(x) is exact in float)."""
    whole = np.trunc(x)
    return np.where(np.abs(x - whole) >= F32(0.5), whole + np.copysign(F32(1), x), whole)


def _hardsigmoid(x: np.ndarray) -> np.ndarray:
    return np.minimum(F32(1), np.maximum(F32(0), (x + F32(3)) / F32(6)))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > 20, x, np.log(F32(1) + np.exp(np.minimum(x, F32(20)))))


def _xielu(node: TensorRef):
    p = node.params()
    alpha_n, alpha_p, beta, eps = F32(p.alpha_n), F32(p.alpha_p), F32(p.beta), F32(p.eps)

    def xielu(x):
        negative = (np.expm1(np.minimum(x, eps)) - x) * alpha_n + beta * x
        return np.where(x > 0, alpha_p * x * x + beta * x, negative)

    return xielu


def _plain(function):
    return lambda node: function


def _tabled(table, exact):
    """ggml's CPU looks GELU and GELU_QUICK up in F16 tables for F32 and F16 values, and
    computes them for BF16 values."""
    return lambda node: exact if node.src(0).kind.name == "BF16" else table


UNARY = {  # sub-op -> (node -> function of float32 values)
    "ABS": _plain(np.abs), "SGN": _plain(lambda x: (x > 0).astype(F32) - (x < 0).astype(F32)),  # NaN: 0
    "NEG": _plain(np.negative),
    "STEP": _plain(lambda x: (x > 0).astype(F32)),
    "TANH": _plain(np.tanh), "ELU": _plain(lambda x: np.where(x > 0, x, np.expm1(x))),
    "RELU": _plain(relu), "SIGMOID": _plain(lambda x: F32(1) / (F32(1) + np.exp(-x))),
    "GELU": _tabled(gelu_table, gelu_f32), "GELU_QUICK": _tabled(gelu_quick_table, gelu_quick_f32),
    "GELU_ERF": _plain(gelu_erf),
    "SILU": _plain(silu),
    "HARDSWISH": _plain(lambda x: x * _hardsigmoid(x)), "HARDSIGMOID": _plain(_hardsigmoid),
    "EXP": _plain(np.exp), "EXPM1": _plain(lambda x: np.exp(x) - F32(1)), "SOFTPLUS": _plain(_softplus),
    "XIELU": _xielu,
    "FLOOR": _plain(np.floor), "CEIL": _plain(np.ceil), "ROUND": _plain(_round), "TRUNC": _plain(np.trunc),
}


def sub_op(node: TensorRef, names: tuple[str, ...], supported: dict) -> str:
    """The sub-op named by the node's `op` param (UNARY, GLU) in this release's table, checked
    against the supported ones; from now on the node's params include the sub-op's own."""
    index = node.params().op
    name = names[index] if 0 <= index < len(names) else ""  # "": outside the table, never supported
    require(name in supported, node, "{} op {} is not supported", node.op.lower(), name or index)
    node.sub = name
    return name


@kernels.kernel("UNARY")
def build_unary(node: TensorRef, ctx: ExecContext) -> Step | None:
    function = UNARY[sub_op(node, ctx.ggml.unary_ops, UNARY)](node)
    step = map_values(node, ctx, function)
    return step if node.n_elements else None


def _glu_inputs(node: TensorRef) -> Callable:
    """(x, gate) for a GLU node: src0 and src1 (split form), or the first and second halves
    of src0's rows (fused form, rows of odd length leaving their last element out;
    `swapped` exchanges the halves)."""
    a, b = node.src(0), optional_src(node, 1)
    float_like(node, a, node)
    contiguous(node, *(t for t in (a, b) if t is not None), from_dim=1)
    if b is not None:
        float_like(node, b)
        same_shape(node, a, b)
        same_shape(node, node, a)
        return lambda ctx: (a.read(ctx.cache), b.read(ctx.cache))
    half = a.ne[0] // 2
    require(node.ne[0] == half and a.ne[1:] == node.ne[1:], node,
            "fused GLU: the result {} must have rows of half ({}) of src0's {}", node.ne, half, a.ne)
    swapped = node.params().swapped

    def halves(ctx):
        values = a.read(ctx.cache)
        x, g = values[..., :half], values[..., half:2 * half]
        return (g, x) if swapped else (x, g)

    return halves


def _swiglu_oai(node: TensorRef):
    require(node.src(0).kind.name == "F32", node, "SWIGLU_OAI takes F32 only (ggml's CPU aborts on {})",
            node.src(0).kind.name)
    p = node.params()
    alpha, limit = F32(p.alpha), F32(p.limit)

    def glu(x, g):
        x = np.minimum(x, limit)
        g = np.clip(g, -limit, limit)
        return x / (F32(1) + np.exp(alpha * -x)) * (g + F32(1))

    return glu


def _swiglu_clamp(node: TensorRef):
    limit = F32(node.params().limit)

    def glu(x, g):
        x = np.minimum(x, limit)
        return x / (F32(1) + np.exp(-x)) * np.clip(g, -limit, limit)

    return glu


def _gated(activation):
    """The GLU act(x) * g of a UNARY entry."""
    def make(node: TensorRef):
        act = activation(node)
        return lambda x, g: act(x) * g

    return make


GLU = {  # sub-op -> (node -> function of float32 x, g)
    "REGLU": _plain(lambda x, g: np.where(x > 0, x * g, F32(0))),
    "GEGLU": _gated(UNARY["GELU"]),
    "SWIGLU": _gated(UNARY["SILU"]),
    "SWIGLU_OAI": _swiglu_oai,
    "GEGLU_ERF": _gated(UNARY["GELU_ERF"]),
    "GEGLU_QUICK": _gated(UNARY["GELU_QUICK"]),
    "SWIGLU_CLAMP": _swiglu_clamp,
}


@kernels.kernel("GLU")
def build_glu(node: TensorRef, ctx: ExecContext) -> Step | None:
    function = GLU[sub_op(node, ctx.ggml.glu_ops, GLU)](node)
    inputs = _glu_inputs(node)
    if not node.n_elements:
        return None

    def run():
        x, g = inputs(ctx)
        node.write(function(x, g))

    return run
