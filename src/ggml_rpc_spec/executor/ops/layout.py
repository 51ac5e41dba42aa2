"""Ops that build a tensor from others by position: REPEAT, REPEAT_BACK, CONCAT, PAD,
PAD_REFLECT_1D, ROLL, FILL, ARANGE, DIAG, TRI.

Values move as they are (no conversion): the sources' views are indexed and stored through
the destination's view.  Every op_param that places values (pads, shifts, the concat
dimension, the range) is checked against the shapes in `build` (rule exec.op-params), so a
hostile graph can neither read outside a source nor write outside the destination.
"""

from __future__ import annotations

import numpy as np

from ..registry import ExecContext, Kernels, OP_PARAMS, Step, contiguous, dense_rows, require, same_shape
from ..tensors import TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)

REPEAT_TYPES = ("F32", "F16", "BF16", "I32", "I16")  # those ggml's CPU repeats


def _types(node: TensorRef, allowed: tuple[str, ...], *tensors: TensorRef) -> None:
    for tensor in tensors:
        require(tensor.kind.name in allowed, node, "{!r} is {}, not one of {}", tensor.name, tensor.kind.name,
                "/".join(allowed))
        require(tensor.buffer is not None, node, "{!r} has no buffer on this server", tensor.name)


@kernels.kernel("REPEAT")
def build_repeat(node: TensorRef, ctx: ExecContext) -> Step | None:
    src = node.src(0)
    dense_rows(node, src)  # ggml asserts nb00 == the element size
    _types(node, REPEAT_TYPES, src, node)
    require(node.kind.name == src.kind.name, node, "REPEAT keeps the type")
    if node.n_elements == 0:
        return None
    require(all(have > 0 and want % have == 0 for have, want in zip(src.ne, node.ne, strict=True)), node,
            "{} does not repeat to {}", src.ne, node.ne)
    reps = tuple(want // have for have, want in zip(src.shape, node.shape, strict=True))
    x, out = src.view(), node.view()

    def run():
        out[...] = np.tile(x, reps)

    return run


@kernels.kernel("REPEAT_BACK")
def build_repeat_back(node: TensorRef, ctx: ExecContext) -> Step | None:
    src = node.src(0)
    _types(node, ("F32",), src, node)
    dense_rows(node, src)  # ggml asserts nb00 == sizeof(float)
    require(all(want > 0 and have > 0 and have % want == 0 for have, want in zip(src.ne, node.ne, strict=True)), node,
            "{} is not a repeat of {}", src.ne, node.ne)
    # src (n3, e3, n2, e2, n1, e1, n0, e0) -> tiles first, in ggml's loop order (i3, i2, i1, i0)
    split = [d for want, have in zip(node.shape, src.shape, strict=True) for d in (have // want, want)]
    x, out = src.view(), node.view()

    def run():
        tiles = x.reshape(split).transpose(0, 2, 4, 6, 1, 3, 5, 7).reshape((-1,) + node.shape)
        out[...] = np.cumsum(tiles, axis=0, dtype=np.float32)[-1]  # tile after tile, in float

    return run


@kernels.kernel("CONCAT")
def build_concat(node: TensorRef, ctx: ExecContext) -> Step | None:
    a, b = node.src(0), node.src(1)
    dim = node.params().dim
    require(0 <= dim <= 3, node, "dim {} outside [0, 3]", dim, rule=OP_PARAMS)
    require(a.kind.name == b.kind.name == node.kind.name, node, "a, b and the result must share a type")
    for d in range(4):
        want = a.ne[d] + b.ne[d] if d == dim else a.ne[d]
        require(node.ne[d] == want and (d == dim or b.ne[d] == want), node,
                "shapes {} and {} do not concatenate to {} along {}", a.ne, b.ne, node.ne, dim, rule=OP_PARAMS)
    for tensor in (a, b, node):
        require(tensor.buffer is not None, node, "{!r} has no buffer on this server", tensor.name)
    if node.n_elements == 0:
        return None
    axis = 3 - dim
    if node.quantized:  # whole blocks: rows of bytes (row_bytes refuses non-contiguous blocks)
        x, y, out = a.row_bytes(), b.row_bytes(), node.row_bytes()
    else:
        require(node.kind.name in ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"), node,
                "cannot concatenate {}", node.kind.name)
        x, y, out = a.view(), b.view(), node.view()
    def run():
        joined = np.concatenate((x, y), axis=axis)  # both read before the result is written
        out[...] = joined

    return run


def _pad_params(node: TensorRef, src: TensorRef) -> tuple[list[int], list[int], bool]:
    p = node.params()
    left = [p.lp0, p.lp1, p.lp2, p.lp3]
    right = [p.rp0, p.rp1, p.rp2, p.rp3]
    for d in range(4):
        require(src.ne[d] + left[d] + right[d] == node.ne[d], node,
                "dimension {}: {} + {} + {} != {}", d, left[d], src.ne[d], right[d], node.ne[d], rule=OP_PARAMS)
    return left, right, p.circular


@kernels.kernel("PAD")
def build_pad(node: TensorRef, ctx: ExecContext) -> Step | None:
    src = node.src(0)
    _types(node, ("F32",), src, node)
    left, right, circular = _pad_params(node, src)
    contiguous(node, node)
    if node.n_elements == 0:
        return None
    x, out = src.view(), node.view()
    if circular:
        # ggml wraps (i - lp + ne) % ne in C: a left pad beyond the source's extent reads before it
        require(all(0 < n and lp <= n for lp, n in zip(left, src.ne, strict=True)), node,
                "circular padding {} needs a source of at least that extent, not {}", left, src.ne,
                rule=OP_PARAMS)
        index = np.ix_(*[(np.arange(size) - lp) % n for size, lp, n in
                         zip(node.shape, left[::-1], src.shape, strict=True)])
        return lambda: out.__setitem__(Ellipsis, x[index])
    # zero padding; negative pads crop
    targets, sources = [], []
    for size, lp, rp in zip(node.shape, left[::-1], right[::-1], strict=True):
        lo, hi = max(lp, 0), size - max(rp, 0)
        targets.append(slice(lo, max(hi, lo)))
        sources.append(slice(lo - lp, max(hi, lo) - lp))
    target, source = tuple(targets), tuple(sources)
    shape = node.shape

    def run():
        padded = np.zeros(shape, np.float32)
        padded[target] = x[source]
        out[...] = padded

    return run


@kernels.kernel("PAD_REFLECT_1D")
def build_pad_reflect_1d(node: TensorRef, ctx: ExecContext) -> Step | None:
    src = node.src(0)
    _types(node, ("F32",), src, node)
    p = node.params()
    n = src.ne[0]
    require(0 <= p.p0 < n and 0 <= p.p1 < n, node, "reflection pads {}, {} must lie in [0, {})", p.p0, p.p1, n,
            rule=OP_PARAMS)
    require(node.ne == (n + p.p0 + p.p1,) + src.ne[1:], node, "result must be [{} + {} + {}, ...] as the source",
            p.p0, n, p.p1, rule=OP_PARAMS)
    dense_rows(node, src, node)
    if node.n_elements == 0:
        return None
    index = np.concatenate((np.arange(p.p0, 0, -1), np.arange(n), np.arange(n - 2, n - 2 - p.p1, -1)))
    x, out = src.view(), node.view()
    return lambda: out.__setitem__(Ellipsis, x[..., index])


@kernels.kernel("ROLL")
def build_roll(node: TensorRef, ctx: ExecContext) -> Step | None:
    src = node.src(0)
    _types(node, ("F32",), src, node)
    same_shape(node, node, src)
    p = node.params()
    shifts = [p.shift0, p.shift1, p.shift2, p.shift3]
    require(all(abs(s) < n for s, n in zip(shifts, src.ne, strict=True)), node,
            "shifts {} must each be smaller than the extent {}", shifts, src.ne, rule=OP_PARAMS)
    dense_rows(node, src, node)
    x, out = src.view(), node.view()
    by_axis = tuple(shifts[::-1])

    def run():
        out[...] = np.roll(x, by_axis, axis=(0, 1, 2, 3))

    return run


@kernels.kernel("FILL")
def build_fill(node: TensorRef, ctx: ExecContext) -> Step | None:
    _types(node, ("F32", "F16"), node)
    dense_rows(node, node)
    value = np.float32(node.params().c)
    out = node.view()
    return lambda: out.__setitem__(Ellipsis, value)


@kernels.kernel("ARANGE")
def build_arange(node: TensorRef, ctx: ExecContext) -> Step | None:
    _types(node, ("F32",), node)
    p = node.params()
    start, stop, step = np.float32(p.start), np.float32(p.stop), np.float32(p.step)
    with np.errstate(all="ignore"):
        steps = np.ceil((stop - start) / step)  # in float, as ggml
    require(bool(np.isfinite(steps)) and steps == node.n_elements, node,
            "start {}, stop {}, step {} give {} values, the result holds {}", start, stop, step, steps,
            node.n_elements, rule=OP_PARAMS)
    contiguous(node, node)  # ggml writes value i at data + 4i
    if node.n_elements == 0:
        return None
    out = node.view().reshape(-1)
    values = start + step * np.arange(node.n_elements, dtype=np.int64).astype(np.float32)
    values.setflags(write=False)
    return lambda: out.__setitem__(Ellipsis, values)


@kernels.kernel("DIAG")
def build_diag(node: TensorRef, ctx: ExecContext) -> Step | None:
    src = node.src(0)
    _types(node, ("F32",), src, node)
    dense_rows(node, src)  # ggml asserts nb00 == sizeof(float)
    n = src.ne[0]
    require(src.ne[1] == 1 and node.ne == (n, n, src.ne[2], src.ne[3]), node,
            "DIAG takes [n, 1, a2, a3] and yields [n, n, a2, a3]")
    x, out = src.view(), node.view()
    shape = node.shape
    at = np.arange(n)

    def run():
        square = np.zeros(shape, np.float32)
        square[..., at, at] = x[:, :, 0, :]
        out[...] = square

    return run


@kernels.kernel("TRI")
def build_tri(node: TensorRef, ctx: ExecContext) -> Step | None:
    src = node.src(0)
    _types(node, ("F32",), src, node)
    contiguous(node, src)
    same_shape(node, node, src)
    kind = node.params().type
    require(kind in (0, 1, 2, 3), node, "triangle type {} outside [0, 3]", kind, rule=OP_PARAMS)
    dense_rows(node, node)
    i0 = np.arange(src.ne[0])[None, :]
    i1 = np.arange(src.ne[1])[:, None]
    keep = (i0 >= i1, i0 > i1, i0 <= i1, i0 < i1)[kind]
    x, out = src.view(), node.view()
    return lambda: out.__setitem__(Ellipsis, np.where(keep, x, np.float32(0)))
