"""Row gathers and scatters: GET_ROWS, SET_ROWS (every index checked before memory is touched)."""

from __future__ import annotations

import numpy as np

from ..errors import ExecutionError
from ..registry import ExecContext, Step, float_like, kernel, readable, require
from ..tensors import TensorRef, dequantize, quantize


def _rows_in_range(node: TensorRef, index: np.ndarray, limit: int) -> None:
    if index.size and (index.min() < 0 or index.max() >= limit):
        bad = index[(index < 0) | (index >= limit)][0]
        raise ExecutionError(f"{node.label} {node.name!r}: row index {int(bad)} outside [0, {limit})",
                             rule="exec.rows-in-range")


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
