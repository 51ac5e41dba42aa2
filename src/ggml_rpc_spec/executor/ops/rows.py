"""Row gathers and scatters: GET_ROWS, SET_ROWS, GET_ROWS_BACK.

Every index is read from the index tensor's current values in `run()` and checked before
any memory is touched (rule exec.rows-in-range): a hostile index would otherwise pick
memory outside the tensor.
"""

from __future__ import annotations

import numpy as np

from ggml_rpc_spec.protocol.ggml import ELEMENT_DTYPES

from .. import quants
from ..registry import ExecContext, Kernels, ROWS_IN_RANGE, Step, in_range, readable, require
from ..tensors import TensorRef, dequantize, quantize

kernels = Kernels()  # this family's kernels (see executor.ops)


def _rows_in_range(node: TensorRef, index: np.ndarray, limit: int) -> None:
    in_range(node, index, limit, "row index", ROWS_IN_RANGE)


def _dense(t: TensorRef) -> bool:
    """Elements back to back in row-major order (the stride of a dimension of size 1 is moot),
    as ggml_is_contiguous judges an element tensor."""
    expected = t.kind.type_size
    for size, stride in zip(t.ne, t.nb):
        if size > 1 and stride != expected:
            return False
        expected *= size
    return True


@kernels.kernel("GET_ROWS")
def build_get_rows(node: TensorRef, ctx: ExecContext) -> Step | None:
    """dst[i12, i11, i10, :] = src0[i12, i11, src1[i12, i11, i10], :], as float32 (or as I32
    from an I32 table)."""
    data, index = node.src(0), node.src(1)
    readable(node, data)
    require(data.kind.name in ELEMENT_DTYPES or quants.readable(data.kind.name), node, "cannot read {} tensors",
            data.kind.name)
    require(index.kind.name == "I32", node, "indices must be I32")
    require(node.kind.name == ("I32" if data.kind.name == "I32" else "F32"), node,
            "the result of GET_ROWS from {} is {}", data.kind.name, "I32" if data.kind.name == "I32" else "F32")
    require(data.ne[2] == index.ne[1] and data.ne[3] == index.ne[2] and index.ne[3] == 1, node,
            "src0 dims 2, 3 must match src1 dims 1, 2")
    require(node.ne == (data.ne[0], index.ne[0], index.ne[1], index.ne[2]), node, "result shape")
    require(data.ne[0] % data.kind.block_size == 0 and (not data.quantized or data.nb[0] == data.kind.type_size),
            node, "rows are not whole {} blocks back to back", data.kind.name)
    if node.n_elements == 0:
        return None
    grid3 = np.arange(index.ne[2])[:, None, None]
    grid2 = np.arange(index.ne[1])[None, :, None]

    def run():
        rows = index.view()[0]  # (ne12, ne11, ne10)
        _rows_in_range(node, rows, data.ne[1])
        if data.quantized:
            values = dequantize(data.kind, data.row_bytes()[grid3, grid2, rows])
        else:
            values = data.view()[grid3, grid2, rows]
        node.view()[...] = values

    return run


@kernels.kernel("SET_ROWS")
def build_set_rows(node: TensorRef, ctx: ExecContext) -> Step | None:
    """dst[i03, i02, src1[i03 % ne12, i02 % ne11, i], :] = src0[i03, i02, i, :], each row
    converted to the destination's type as ggml's from_float does (F16 rows into an F16
    destination are copied as they are)."""
    src, index = node.src(0), node.src(1)
    require(src.kind.name in ("F32", "F16"), node, "src0 must be F32 or F16")
    require(index.kind.name in ("I32", "I64"), node, "indices must be I32 or I64")
    require(node.kind.name in ELEMENT_DTYPES or quants.writable(node.kind.name), node,
            "cannot write {} tensors (ggml's CPU has no quantizer for them)", node.kind.name)
    require(src.ne[0] == node.ne[0] and src.ne[2] == node.ne[2] and src.ne[3] == node.ne[3], node,
            "rows of src0 must match the destination")
    require(index.ne[0] == src.ne[1] and index.ne[1] > 0 and index.ne[2] > 0 and src.ne[2] % index.ne[1] == 0
            and src.ne[3] % index.ne[2] == 0 and index.ne[3] == 1, node, "src1 must index every row of src0")
    require(node.ne[0] % node.kind.block_size == 0 and (not node.quantized or node.nb[0] == node.kind.type_size),
            node, "rows are not whole {} blocks back to back", node.kind.name)
    readable(node, src, index, node)
    if src.n_elements == 0:
        return None
    grid3 = np.arange(src.ne[3])[:, None, None]
    grid2 = np.arange(src.ne[2])[None, :, None]
    pick = np.ix_(np.arange(src.ne[3]) % index.ne[2], np.arange(src.ne[2]) % index.ne[1])

    def run():
        rows = index.view()[0][pick]  # (ne03, ne02, ne01): the destination row of every source row
        _rows_in_range(node, rows, node.ne[1])
        if node.quantized:
            node.row_bytes()[grid3, grid2, rows] = quantize(node.kind, src.read())
        else:
            node.view()[grid3, grid2, rows] = src.view()

    return run


@kernels.kernel("GET_ROWS_BACK")
def build_get_rows_back(node: TensorRef, ctx: ExecContext) -> Step:
    """The gradient of GET_ROWS: dst = 0, then for i in order dst[src1[i], :] += src0[i, :]
    (float32 sums in index order, so repeated rows add up as in ggml)."""
    grads, index = node.src(0), node.src(1)
    require(grads.kind.name in ("F32", "F16"), node, "src0 must be F32 or F16")
    require(index.kind.name == "I32", node, "indices must be I32")
    require(node.kind.name == "F32", node, "the result is F32")
    readable(node, grads, index)
    require(node.buffer is not None, node, "the destination has no buffer on this server")
    require(_dense(node) and _dense(index), node, "the result and src1 must be contiguous (as ggml reads them)")
    count = index.n_elements
    require(node.ne[0] == grads.ne[0], node, "rows of src0 and the result differ in length")
    require(count <= grads.ne[1] and grads.ne[2] == 1 and grads.ne[3] == 1, node,
            "src0 must be a matrix with a row for each of the {} indices", count)
    limit = node.ne[1]

    def run():
        rows = index.view().reshape(-1)
        _rows_in_range(node, rows, limit)
        out = node.view()
        out[...] = 0
        if count and node.ne[0]:
            np.add.at(out[0, 0], rows, grads.view()[0, 0, :count].astype(np.float32))

    return run
