"""Activations (UNARY sub-ops) and gated linear units (GLU sub-ops)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..registry import ExecContext, Step, float_like, kernel, map_values, optional_src, require, same_shape
from ..tensors import TensorRef


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


def sub_op(node: TensorRef, names: tuple[str, ...], supported: dict) -> str:
    """The sub-op named by the node's `op` param (UNARY, GLU) in this release's table, checked
    against the supported ones; from now on the node's params include the sub-op's own."""
    index = node.params().op
    name = names[index] if 0 <= index < len(names) else None
    require(name in supported, node, "{} op {} is not supported", node.op.lower(), name or index)
    node.sub = name
    return name


@kernel("UNARY")
def build_unary(node: TensorRef, ctx: ExecContext) -> Step:
    return map_values(node, ctx, UNARY[sub_op(node, ctx.ggml.unary_ops, UNARY)])


def _glu_inputs(node: TensorRef) -> Callable:
    """(x, gate) for a GLU node: src0 and src1 (split form), or the two halves of src0's
    rows (fused form; `swapped` exchanges them)."""
    a, b = node.src(0), optional_src(node, 1)
    float_like(node, a, node)
    if b is not None:
        float_like(node, b)
        same_shape(node, a, b)
        same_shape(node, node, a)
        return lambda ctx: (a.read(ctx.cache), b.read(ctx.cache))
    require(a.ne[0] == 2 * node.ne[0] and a.ne[1:] == node.ne[1:], node, "fused GLU needs src0 rows twice as long")
    half, swapped = node.ne[0], node.params().swapped

    def halves(ctx):
        values = a.read(ctx.cache)
        x, g = values[..., :half], values[..., half:]
        return (g, x) if swapped else (x, g)

    return halves


def _swiglu_oai(node: TensorRef):
    p = node.params()
    alpha, limit = np.float32(p.alpha), np.float32(p.limit)

    def glu(x, g):
        x = np.minimum(x, limit)
        g = np.clip(g, -limit, limit)
        return x / (1.0 + np.exp(alpha * -x)) * (g + 1.0)

    return glu


def _swiglu_clamp(node: TensorRef):
    limit = np.float32(node.params().limit)

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
