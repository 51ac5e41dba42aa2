"""Normalisation: NORM, RMS_NORM, L2_NORM (per row), GROUP_NORM (per group of channels).

As ggml's CPU backend: squares are formed in float and summed in double, the mean or
variance is rounded to float, and the row is multiplied by the float reciprocal of the
square root.
"""

from __future__ import annotations

import numpy as np

from ..registry import ExecContext, Kernels, OP_PARAMS, Step, readable, require, same_shape
from ..tensors import TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)

F32 = np.float32


def _rows(node: TensorRef) -> TensorRef:
    """ggml's CPU normalises F32 rows only and writes floats into the result whatever its
    type (any other type aborts it, or overruns an F16 result)."""
    src = node.src(0)
    require(src.kind.name == "F32" and node.kind.name == "F32", node, "{} of {} into {}: ggml computes F32 only",
            node.op, src.kind.name, node.kind.name)
    readable(node, src)
    same_shape(node, node, src)
    return src


def _sum(values: np.ndarray, axis=-1) -> np.ndarray:
    """A sum of float32 values accumulated in double (ggml_float), kept as double."""
    return values.sum(axis=axis, keepdims=True, dtype=np.float64)


@kernels.kernel("NORM", "RMS_NORM", "L2_NORM")
def build_norm(node: TensorRef, ctx: ExecContext) -> Step | None:
    src = _rows(node)
    eps = F32(node.params().eps)
    require(eps >= 0, node, "eps {} is not >= 0", eps, rule=OP_PARAMS)  # ggml asserts it
    if not node.n_elements:
        return None
    n = src.ne[0]
    op = node.op

    def run():
        x = src.read(ctx.cache)
        if op == "RMS_NORM":
            mean = (_sum(np.square(x)) / n).astype(F32)
            node.write(x * (F32(1) / np.sqrt(mean + eps)))
        elif op == "L2_NORM":
            norm = np.sqrt(_sum(np.square(x)).astype(F32))
            node.write(x * (F32(1) / np.maximum(norm, eps)))
        else:
            mean = _sum(x).astype(F32) / F32(n)
            centered = x - mean
            variance = (_sum(np.square(centered)) / n).astype(F32)
            node.write(centered * (F32(1) / np.sqrt(variance + eps)))

    return run


@kernels.kernel("GROUP_NORM")
def build_group_norm(node: TensorRef, ctx: ExecContext) -> Step | None:
    """Channels (dim 2) in groups of ceil(C / n_groups), the last one possibly smaller; each
    group of each sample (dim 3) normalised over all its values."""
    src = _rows(node)
    p = node.params()
    eps = F32(p.eps)
    # ggml divides by n_groups (and leaves the result unwritten when it is negative)
    require(p.n_groups > 0, node, "n_groups {} must be positive", p.n_groups, rule=OP_PARAMS)
    if not node.n_elements:
        return None
    channels = src.ne[2]
    per_group = -(-channels // p.n_groups)
    starts = np.arange(0, channels, per_group)
    sizes = np.diff(np.append(starts, channels))  # channels in each group
    counts = (sizes * src.ne[0] * src.ne[1]).astype(np.float64)  # values in each group

    def spread(per_group_values):
        """(N, groups) -> (N, C, 1, 1), each group's value repeated over its channels."""
        return np.repeat(per_group_values, sizes, axis=1)[:, :, None, None]

    def run():
        x = src.read(ctx.cache)  # (N, C, H, W)
        total = np.add.reduceat(x.sum(axis=(2, 3), dtype=np.float64), starts, axis=1)
        centered = x - spread((total / counts).astype(F32))
        squares = np.add.reduceat(np.square(centered).sum(axis=(2, 3), dtype=np.float64), starts, axis=1)
        scale = F32(1) / np.sqrt((squares / counts).astype(F32) + eps)
        node.write(centered * spread(scale))

    return run
