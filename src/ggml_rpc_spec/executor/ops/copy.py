"""Copies and conversions: DUP, CONT, CPY, and the strided windows of ACC / SET.

A copy between tensors of one type moves storage units (blocks of a quantized type,
elements otherwise) in row-major order and never converts, so it is exact for every type,
as ggml's byte copy is.  Between element types NumPy casts (C's conversions: round to
nearest even into F16 / BF16, truncation into I32).  Otherwise the values are decoded to
float32 and encoded into the destination type with ggml's quantizers (quants.py).
"""

from __future__ import annotations


from ggml_rpc_spec.protocol.ggml import ELEMENT_DTYPES
from ggml_rpc_spec.protocol.tensor import contiguous_strides

from .. import quants
from ..registry import ExecContext, Kernels, Step, VIEW_PARAMS, readable, require
from ..tensors import TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)


def _whole_blocks(node: TensorRef, *tensors: TensorRef) -> None:
    """Rows of whole blocks, back to back (nb0 = the block's size, as ggml lays them out)."""
    for t in tensors:
        require(t.ne[0] % t.kind.block_size == 0, node, "{} rows of {} elements are not whole {} blocks",
                t.name, t.ne[0], t.kind.name)
        require(not t.quantized or t.nb[0] == t.kind.type_size, node, "{} blocks are not back to back (nb0={})",
                t.name, t.nb[0])


def _decodable(node: TensorRef, t: TensorRef) -> None:
    require(t.kind.name in ELEMENT_DTYPES or quants.readable(t.kind.name), node, "cannot read {} tensors",
            t.kind.name)


def _encodable(node: TensorRef) -> None:
    require(node.kind.name in ELEMENT_DTYPES or quants.writable(node.kind.name), node,
            "cannot write {} tensors (ggml's CPU has no quantizer for them)", node.kind.name)


def _blocks_flat_compatible(node: TensorRef, src: TensorRef) -> None:
    require(src.ne[0] // src.kind.block_size * src.ne[1] * src.ne[2] * src.ne[3]
            == node.ne[0] // node.kind.block_size * node.ne[1] * node.ne[2] * node.ne[3], node,
            "block counts differ")


@kernels.kernel("DUP", "CONT", "CPY")
def build_copy(node: TensorRef, ctx: ExecContext) -> Step | None:
    """The node takes src0's values in row-major order (CPY: the node is a view of src1, its
    destination; the kernel only writes through the node)."""
    src = node.src(0)
    readable(node, src)
    require(node.buffer is not None, node, "the destination has no buffer on this server")
    require(src.n_elements == node.n_elements, node, "element counts differ ({} vs {})", src.n_elements,
            node.n_elements)
    if src.n_elements == 0:
        return None
    if src.kind == node.kind:  # ggml's byte copy: exact for every type, blocks never re-encoded
        _whole_blocks(node, src, node)
        _blocks_flat_compatible(node, src)
        shape = (node.ne[3], node.ne[2], node.ne[1], node.ne[0] // node.kind.block_size)

        def copy_blocks():
            node.blocks()[...] = src.blocks().reshape(shape)

        return copy_blocks
    if not (src.quantized or node.quantized):
        require(src.kind.name in ELEMENT_DTYPES and node.kind.name in ELEMENT_DTYPES, node,
                "cannot convert {} to {}", src.kind.name, node.kind.name)

        def copy_typed():  # typed copy: integers never pass through float
            node.view()[...] = src.view().reshape(node.shape)

        return copy_typed
    _decodable(node, src)
    _encodable(node)
    _whole_blocks(node, src, node)
    if node.quantized:  # ggml's dup_to_q: quantizes contiguous source rows into a contiguous result
        require(src.nb[0] == src.kind.type_size and
                list(node.nb) == contiguous_strides(node.kind.type_size, node.kind.block_size, node.ne), node,
                "converting into {} needs source rows of contiguous elements (nb0 {}) and a contiguous result "
                "(ggml's CPU aborts: not implemented)", node.kind.name, src.nb[0])

    def run():
        node.write(src.read(ctx.cache).reshape(node.shape))

    return run


@kernels.kernel("ACC", "SET")
def build_acc(node: TensorRef, ctx: ExecContext) -> Step | None:
    """result = a, then the window of the result at byte `offset` with byte strides (element,
    nb1, nb2, nb3) and b's shape is a's window + b (ACC) or b (SET).  ggml requires a and the
    result contiguous; b may have any strides.  With the `inplace` word set ggml takes the
    result to be a's memory and does not copy a: outside the window the result keeps what it
    held."""
    a, b = node.src(0), node.src(1)
    kinds = ("F32",) if node.op == "ACC" else ("F32", "I32")
    require(node.kind.name in kinds and a.kind == node.kind and b.kind == node.kind, node,
            "{} takes {} tensors of one type", node.op, "/".join(kinds))
    require(a.ne == node.ne, node, "shape {} differs from {}", a.ne, node.ne)
    readable(node, a, b)
    require(node.buffer is not None, node, "the destination has no buffer on this server")
    require(all(list(t.nb) == contiguous_strides(t.kind.type_size, t.kind.block_size, t.ne) for t in (node, a)),
            node, "destination and src0 must be contiguous (as ggml requires)")
    p = node.params()
    nb1, nb2, nb3, offset = p.nb1, p.nb2, p.nb3, p.offset
    keep = p.inplace  # ggml copies a into the result only when the word says it is not a's memory
    element = node.kind.type_size
    require(min(nb1, nb2, nb3, offset) >= 0, node, "negative stride or offset ({}, {}, {}, {})", nb1, nb2, nb3,
            offset, rule=VIEW_PARAMS)
    same_memory = keep or (node.buffer is a.buffer and node.data == a.data)
    if b.n_elements == 0:  # an empty window: the result is a
        def copy_only():
            node.view()[...] = a.view()

        return None if same_memory else copy_only
    end = offset + (b.ne[0] - 1) * element + (b.ne[1] - 1) * nb1 + (b.ne[2] - 1) * nb2 + (b.ne[3] - 1) * nb3 + element
    require(end <= node.n_elements * element, node,
            "window (offset {}, strides {}/{}/{}) reaches past the destination", offset, nb1, nb2, nb3,
            rule=VIEW_PARAMS)
    strides = (nb3, nb2, nb1, element)
    accumulate = node.op == "ACC"

    def run():
        target = node.window(offset, b.shape, strides)
        if accumulate:
            added = a.window(offset, b.shape, strides) + b.view()  # a's window, read before a is copied
            if not same_memory:
                node.view()[...] = a.view()
            target[...] = added
        else:
            if not same_memory:
                node.view()[...] = a.view()
            target[...] = b.view()

    return run
