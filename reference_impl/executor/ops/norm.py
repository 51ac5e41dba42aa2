"""Row normalisation: NORM, RMS_NORM."""

from __future__ import annotations

import numpy as np

from ..registry import ExecContext, Step, float_like, kernel, require, same_shape
from ..tensors import TensorRef


@kernel("NORM", "RMS_NORM")
def build_norm(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    float_like(node, src, node)
    same_shape(node, node, src)
    eps = np.float32(node.params().eps)
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
