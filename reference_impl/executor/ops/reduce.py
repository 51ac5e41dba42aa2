"""Reductions: SUM, SUM_ROWS, MEAN, ARGMAX."""

from __future__ import annotations

import numpy as np

from ..registry import ExecContext, Step, float_like, kernel, require
from ..tensors import TensorRef


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
