"""Matrix products: MUL_MAT."""

from __future__ import annotations

import numpy as np

from ..numerics import ROUNDING, WITH_MINS, block_mins, q8_1_sum_correction
from ..registry import ExecContext, Step, kernel, readable, require
from ..tensors import TensorRef


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
