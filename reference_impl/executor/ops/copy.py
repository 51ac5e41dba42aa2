"""Copies and conversions: DUP, CONT, CPY, and the strided windows of ACC / SET."""

from __future__ import annotations

import numpy as np

from protocol.tensor import contiguous_strides

from ..registry import ExecContext, Step, float_like, kernel, readable, require, same_shape
from ..tensors import TensorRef


@kernel("DUP", "CONT", "CPY")
def build_copy(node: TensorRef, ctx: ExecContext) -> Step:
    src = node.src(0)
    readable(node, src)
    require(src.n_elements == node.n_elements, node, "element counts differ")
    if not (src.quantized or node.quantized):
        def run():  # typed copy: integers never pass through float
            node.view()[...] = src.view().reshape(node.shape)
    else:
        def run():
            node.write(src.read(ctx.cache).reshape(node.shape))
    return run


@kernel("ACC", "SET")
def build_acc(node: TensorRef, ctx: ExecContext) -> Step:
    """ACC: dst = a, then a strided window of dst += b.  SET: the window = b."""
    a, b = node.src(0), node.src(1)
    float_like(node, a, b, node)
    same_shape(node, node, a)
    require(all(list(t.nb) == contiguous_strides(t.kind.type_size, t.kind.block_size, t.ne) for t in (node, a)),
            node, "destination and src0 must be contiguous (as ggml requires)")
    p = node.params()
    nb1, nb2, nb3, offset = p.nb1, p.nb2, p.nb3, p.offset
    element = node.nb[0]
    require(min(nb1, nb2, nb3, offset) >= 0, node, "negative stride or offset", rule="exec.view-params")
    require(offset % element == 0 and nb1 % element == 0 and nb2 % element == 0 and nb3 % element == 0, node,
            "window strides must be multiples of the element size")
    last = offset + (b.ne[0] - 1) * element + (b.ne[1] - 1) * nb1 + (b.ne[2] - 1) * nb2 + (b.ne[3] - 1) * nb3
    require(b.n_elements == 0 or last < node.n_elements * element, node,
            "window (offset {}, strides {}/{}/{}) reaches past the destination", offset, nb1, nb2, nb3,
            rule="exec.view-params")
    accumulate = node.op == "ACC"

    def run():
        flat = a.read(ctx.cache).reshape(-1).copy()  # contiguous: element i sits at byte i * element
        window = np.lib.stride_tricks.as_strided(
            flat[offset // element:], shape=b.shape,
            strides=(nb3 // element * 4, nb2 // element * 4, nb1 // element * 4, 4), writeable=True)
        window[...] = window + b.read(ctx.cache) if accumulate else b.read(ctx.cache)
        node.write(flat.reshape(node.shape))

    return run
