"""Arithmetic element by element: binary ops with ggml's repeat of src1, SCALE, SQR and friends."""

from __future__ import annotations

import numpy as np

from protocol.ops import spec_for

from ..batch import plain_f32, ufunc_steps
from ..registry import ExecContext, Step, Taken, batch_kernel, kernel, map_values, readable, repeat, require, same_shape
from ..tensors import TensorRef

SCALE = spec_for("SCALE")
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
    require(all(have > 0 and want % have == 0 for have, want in zip(b.ne, a.ne, strict=True)), node,
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


ELEMENTWISE = {"SQR": np.square, "SQRT": np.sqrt, "LOG": np.log, "SIN": np.sin, "COS": np.cos}


@kernel(*ELEMENTWISE)
def build_elementwise(node: TensorRef, ctx: ExecContext) -> Step:
    return map_values(node, ctx, ELEMENTWISE[node.op])


@batch_kernel("SCALE")
def batch_scale(binder, op: str, rows: np.ndarray, ctx: ExecContext) -> Taken:
    """float32 in and out, same shape, no bias: one multiply over views fixed now."""
    a = binder.sources[rows, 0]
    words = binder.op_params[rows]
    scale, bias = SCALE.column(words, "s"), SCALE.column(words, "b")
    ok = plain_f32(binder, rows, a) & (binder.ne[rows] == binder.ne[a]).all(axis=1) & (bias == 0)
    flat = ok & binder.packed[rows] & binder.packed[a]
    return ufunc_steps(binder, np.multiply, rows, ok, flat, (a,), scale)


@kernel("SCALE")
def build_scale(node: TensorRef, ctx: ExecContext) -> Step:
    p = node.params()
    scale, bias = np.float32(p.s), np.float32(p.b)
    return map_values(node, ctx, lambda x: x * scale + bias if bias != 0 else x * scale)
