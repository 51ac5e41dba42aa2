"""Convolution, pooling and image resampling: IM2COL, IM2COL_BACK, IM2COL_3D, COL2IM_1D,
CONV_2D, CONV_3D, CONV_2D_DW, CONV_TRANSPOSE_1D, CONV_TRANSPOSE_2D, POOL_1D, POOL_2D,
POOL_2D_BACK, UPSCALE, TIMESTEP_EMBEDDING, WIN_PART, WIN_UNPART, GET_REL_POS, ADD_REL_POS.

Windows are gathered, never padded: each spatial axis gives, per output position and kernel
tap, the input index it reads (o * s + k * d - p) and whether that index is inside the input;
one fancy index then fetches every window of a block of output rows at once, and the taps
that fall into the padding are zeroed.  So no index can leave a tensor whatever the geometry,
and the padding is never materialised.  The inverse ops (transposed convolutions, col2im)
add window contributions back with one strided slice per kernel tap, or per output position
when there are fewer of those.  Blocks are sized to CHUNK elements; a geometry whose single
output row would need more than SCRATCH elements of windows is refused (exec.op-params)
before anything is allocated.  Every result size is checked against ggml's formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import EllipsisType

import numpy as np

from ggml_rpc_spec.protocol.versions import parse_version

from ..registry import ExecContext, Kernels, OP_PARAMS, Step, dense_rows, packed, readable, require
from ..tensors import TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)

CHUNK = 1 << 22  # elements a block of gathered windows aims at
SCRATCH = 1 << 26  # elements of scratch a single block may need; more is refused
FLT_MAX = float(np.finfo(np.float32).max)
F32, F16 = np.float32, np.float16
POOL_MAX, POOL_AVG = 0, 1
NEAREST, BILINEAR, BICUBIC = 0, 1, 2
ALIGN_CORNERS, ANTIALIAS = 1 << 8, 1 << 9
PARAMS = OP_PARAMS


def c_div(n: int, d: int) -> int:
    """C's integer division (truncates toward zero), d > 0."""
    q = abs(n) // d
    return q if n >= 0 else -q


def _ceil_div(n: int, d: int) -> int:
    return -((-n) // d)


@dataclass(frozen=True)
class Axis:
    """One spatial dimension of a windowed op: the input's extent, the kernel's taps, stride,
    padding, dilation, and the output's extent.  Output o's tap k is input o * s + k * d - p."""

    size: int
    k: int
    s: int = 1
    p: int = 0
    d: int = 1
    out: int = 1

    def expected(self) -> int:
        return c_div(self.size + 2 * self.p - self.d * (self.k - 1) - 1, self.s) + 1

    def taps(self, lo: int = 0, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(input index, inside) for outputs [lo, hi) x taps; outside indices read as 0."""
        hi = self.out if hi is None else hi
        at = np.arange(lo, hi, dtype=np.int64)[:, None] * self.s + np.arange(self.k, dtype=np.int64) * self.d - self.p
        inside = (at >= 0) & (at < self.size)
        return np.where(inside, at, 0), inside

    def outputs_of_tap(self, k: int, lo: int, hi: int) -> tuple[int, int]:
        """The outputs in [lo, hi) whose tap k is inside the input."""
        base = k * self.d - self.p
        return max(lo, _ceil_div(-base, self.s)), min(hi, (self.size - 1 - base) // self.s + 1)

    def taps_of_output(self, o: int) -> tuple[int, int]:
        """The taps of output o that are inside the input."""
        base = o * self.s - self.p
        return max(0, _ceil_div(-base, self.d)), min(self.k, (self.size - 1 - base) // self.d + 1)


def check_axes(node: TensorRef, axes, names: str) -> None:
    """Strides and dilations >= 1, paddings >= 0, and the result's extent along each axis as
    ggml computes it.  Empty kernels (every sum is 0) and inputs are allowed."""
    for axis, name in zip(axes, names):
        require(axis.s >= 1 and axis.d >= 1 and axis.p >= 0, node,
                "axis {}: stride {} and dilation {} must be >= 1, padding {} >= 0", name, axis.s, axis.d, axis.p,
                rule=PARAMS)
        require(axis.size >= 0 and axis.k >= 0, node, "axis {}: negative input ({}) or kernel ({})", name, axis.size,
                axis.k)
        require(axis.out >= 1 and axis.out == axis.expected(), node,
                "axis {}: the result has {} positions where the geometry gives {}", name, axis.out, axis.expected(),
                rule=PARAMS)


def blocks(node: TensorRef, total: int, per_unit: int, what: str) -> list[tuple[int, int]]:
    """[lo, hi) ranges of `total` units, each block about CHUNK elements of scratch."""
    require(per_unit <= SCRATCH, node, "{} needs {} elements of scratch per output row (at most {})", what,
            per_unit, SCRATCH, rule=PARAMS)
    step = max(1, CHUNK // max(per_unit, 1))
    return [(lo, min(lo + step, total)) for lo in range(0, total, step)]


def unflatten(array: np.ndarray, axis: int, sizes: tuple[int, ...]) -> np.ndarray:
    """`array` with `axis` split into `sizes` (row-major): always a view, so writes land."""
    stride = array.strides[axis]
    strides: list[int] = []
    for size in reversed(sizes):
        strides.insert(0, stride)
        stride *= size
    return np.lib.stride_tricks.as_strided(array, array.shape[:axis] + tuple(sizes) + array.shape[axis + 1 :],
                                           array.strides[:axis] + tuple(strides) + array.strides[axis + 1 :])


@dataclass(frozen=True)
class Block:
    """Output rows [lo, hi) of a Windows: the fancy index that gathers them, the per-axis
    masks of taps inside the input (None: all inside), and the gathered shape."""

    lo: int
    hi: int
    index: tuple | None  # None: the input is empty along some axis, every tap is padding
    inside: tuple | None
    shape: tuple[int, ...]


class Windows:
    """The kernel windows of an image x of shape (B, C, S_0, ..., S_n-1), gathered block by
    block of the first output axis as (B, O_0 block, O_1, ..., C, K_0, ..., K_n-1): the layout
    of an im2col row (channel, then taps) at every output position."""

    def __init__(self, node: TensorRef, axes: tuple[Axis, ...], batch: int, channels: int, what: str):
        n, dims = len(axes), 2 * len(axes) + 1
        per_row = batch * channels * math.prod(a.out for a in axes[1:]) * math.prod(a.k for a in axes)
        channel = np.arange(channels).reshape([1] * n + [channels] + [1] * n)
        empty = any(a.size == 0 for a in axes)

        def placed(a: int, at: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            shape = [1] * dims
            shape[a], shape[n + 1 + a] = at.shape
            return at.reshape(shape), None if ok.all() else ok.reshape(shape)

        rest = [placed(a, *axis.taps()) for a, axis in enumerate(axes) if a > 0]
        self.blocks = []
        for lo, hi in blocks(node, axes[0].out, per_row, what):
            first = placed(0, *axes[0].taps(lo, hi))
            masks = tuple(m for _, m in (first, *rest) if m is not None)
            self.blocks.append(Block(lo, hi, None if empty else (slice(None), channel, first[0], *(i for i, _ in rest)),
                                     masks or None,
                                     (batch, hi - lo, *(a.out for a in axes[1:]), channels, *(a.k for a in axes))))

    def __iter__(self):
        return iter(self.blocks)

    @staticmethod
    def gather(x: np.ndarray, block: Block) -> np.ndarray:
        """The block's windows of x, zeros where a tap falls into the padding."""
        if block.index is None:
            return np.zeros(block.shape, x.dtype)
        values = x[block.index]
        if block.inside is not None:
            inside = block.inside[0]
            for mask in block.inside[1:]:
                inside = inside & mask
            np.copyto(values, 0, where=~inside)
        return values


def _trailing(*parts: slice | int) -> tuple[EllipsisType | slice | int, ...]:
    """The index (..., *parts): `parts` over an array's last axes."""
    return (..., *parts)


def scatter(out: np.ndarray, cols: np.ndarray, axes: tuple[Axis, ...], lo: int = 0) -> None:
    """out (B..., I_0, ..., I_n-1) += cols (B..., O_0, ..., O_n-1, K_0, ..., K_n-1): output
    position o (o_0 counted from `lo`) tap k lands on o * s + k * d - p; what lands outside out
    is dropped.  One strided slice per tap or per position, whichever there are fewer of (in
    both, no element is hit twice by one slice)."""
    n = len(axes)
    extents = [(lo, lo + cols.shape[-2 * n])] + [(0, a.out) for a in axes[1:]]
    if math.prod(a.k for a in axes) <= math.prod(hi - low for low, hi in extents):
        for taps in np.ndindex(*(a.k for a in axes)):
            source, target = [], []
            for axis, k, (low, hi) in zip(axes, taps, extents):
                first, last = axis.outputs_of_tap(k, low, hi)
                if first >= last:
                    break
                start = first * axis.s + k * axis.d - axis.p
                target.append(slice(start, start + (last - first - 1) * axis.s + 1, axis.s))
                source.append(slice(first - low, last - low))
            else:
                out[_trailing(*target)] += cols[_trailing(*source, *taps)]
    else:
        for position in np.ndindex(*(hi - low for low, hi in extents)):
            source, target = [], []
            for axis, o, (low, _) in zip(axes, position, extents):
                first, last = axis.taps_of_output(o + low)
                if first >= last:
                    break
                start = (o + low) * axis.s + first * axis.d - axis.p
                target.append(slice(start, start + (last - first - 1) * axis.d + 1, axis.d))
                source.append(slice(first, last))
            else:
                out[_trailing(*target)] += cols[_trailing(*position, *source)]


def kinds(node: TensorRef, tensor: TensorRef, allowed: tuple[str, ...], role: str) -> None:
    require(tensor.kind.name in allowed, node, "{} must be {}, not {}", role, " or ".join(allowed), tensor.kind.name)


def f32_result(node: TensorRef, **sources: tuple[TensorRef, tuple[str, ...]]) -> None:
    """Each source (keyword: its role) of an allowed type and readable; the result F32."""
    for role, (tensor, allowed) in sources.items():
        kinds(node, tensor, allowed, "the " + role.replace("_", " "))
    kinds(node, node, ("F32",), "the result")
    readable(node, *(tensor for tensor, _ in sources.values()))


def image_values(image: TensorRef, ctx: ExecContext) -> np.ndarray:
    """The image's elements, as stored when F32 or F16 (a view), else as float32."""
    return image.view() if image.kind.name in ("F32", "F16") else image.read(ctx.cache)


# -- im2col and its inverses ---------------------------------------------------------------------


def _im2col_geometry(node: TensorRef, kern: TensorRef, image: TensorRef, p) -> tuple:
    """(N, IC, axes (H, W)) of an IM2COL-shaped op whose image is `image` (1-D: H is a unit axis)."""
    require(p.is_2d in (0, 1), node, "is_2d must be 0 or 1, not {}", p.is_2d, rule=PARAMS)
    if p.is_2d:
        n, ic = image.ne[3], image.ne[2]
        return n, ic, (Axis(image.ne[1], kern.ne[1], p.s1, p.p1, p.d1), Axis(image.ne[0], kern.ne[0], p.s0, p.p0, p.d0))
    require(image.ne[3] == 1, node, "a 1-D image has no dimension 3 ({})", image.ne[3])
    return image.ne[2], image.ne[1], (Axis(1, 1), Axis(image.ne[0], kern.ne[0], p.s0, p.p0, p.d0))


def _with_out(axes: tuple[Axis, ...], outs: tuple[int, ...]) -> tuple[Axis, ...]:
    return tuple(Axis(a.size, a.k, a.s, a.p, a.d, o) for a, o in zip(axes, outs))


@kernels.kernel("IM2COL")
def build_im2col(node: TensorRef, ctx: ExecContext) -> Step:
    """dst[n, oh, ow, (ic, kh, kw)] = image[n, ic, oh*s1 + kh*d1 - p1, ow*s0 + kw*d0 - p0], 0 outside."""
    kern, image = node.src(0), node.src(1)
    kinds(node, node, ("F32", "F16"), "the result")
    # ggml's CPU: an F32 result asserts an F32 image; an F16 result takes an F16 or F32 image
    # (3.6.1's ggml and older: and an F16 kernel)
    kinds(node, image, ("F32",) if node.kind.name == "F32" else ("F32", "F16"), "the image")
    if node.kind.name == "F16" and parse_version(ctx.ggml.release) <= (3, 6, 1):
        kinds(node, kern, ("F16",), f"the kernel of an F16 result (ggml {ctx.ggml.release})")
    readable(node, image)
    dense_rows(node, image)  # ggml asserts nb10 == the image's type size
    p = node.params()
    require(not p.is_2d or image.nb[1] == image.ne[0] * image.kind.type_size, node,
            "ggml reads each image plane as packed rows (nb1 {} is not IW * size): refused", image.nb[1])
    if node.kind.name == "F16":
        dense_rows(node, kern)  # 0.3.20 asserts nb00 == sizeof(ggml_fp16_t) for an F16 result
    n, ic, axes = _im2col_geometry(node, kern, image, p)
    if p.is_2d:
        require(kern.ne[2] == ic, node, "kernel channels {} differ from the image's {}", kern.ne[2], ic)
        axes = _with_out(axes, (node.ne[2], node.ne[1]))
        require(node.ne[3] == n, node, "result batch {} differs from the image's {}", node.ne[3], n)
    else:
        require(kern.ne[1] == ic, node, "kernel channels {} differ from the image's {}", kern.ne[1], ic)
        axes = _with_out(axes, (1, node.ne[1]))
        require(node.ne[2] == n and node.ne[3] == 1, node, "result [., OW, N, 1] does not match N = {}", n)
    check_axes(node, axes, "yx")
    row = ic * axes[0].k * axes[1].k
    require(node.ne[0] == row, node, "result rows hold {} values, not IC * KH * KW = {}", node.ne[0], row)
    windows = Windows(node, axes, n, ic, "im2col")
    ow = axes[1].out

    def run():
        x = image_values(image, ctx)  # (N, IC, IH, IW); 1-D: (1, N, IC, IW)
        x = x if p.is_2d else x[0][:, :, None, :]
        dst = node.view() if p.is_2d else node.view()[0][:, None]  # (N, OH, OW, row)
        for block in windows:
            lo, hi = block.lo, block.hi
            dst[:, lo:hi] = Windows.gather(x, block).reshape(n, hi - lo, ow, row)

    return run


@kernels.kernel("IM2COL_3D")
def build_im2col_3d(node: TensorRef, ctx: ExecContext) -> Step | None:
    """dst[n*OD + od, oh, ow, (ic, kd, kh, kw)] = image[n*IC + ic, od*s2 + kd*d2 - p2, ...], 0 outside."""
    kern, image = node.src(0), node.src(1)
    kinds(node, node, ("F32", "F16"), "the result")
    kinds(node, image, ("F32", "F16", "BF16"), "the image")
    readable(node, image)
    dense_rows(node, image)  # ggml asserts nb10 == the image's type size
    p = node.params()
    ic = p.ic
    require(ic >= 1, node, "IC {} must be >= 1", ic, rule=PARAMS)
    n = image.ne[3] // ic  # ggml's integer division: channels past N * IC are not read
    axes: tuple[Axis, ...] = (Axis(image.ne[2], kern.ne[2], p.s2, p.p2, p.d2),
                              Axis(image.ne[1], kern.ne[1], p.s1, p.p1, p.d1),
                              Axis(image.ne[0], kern.ne[0], p.s0, p.p0, p.d0))
    od = axes[0].expected()
    require(od >= 1 and node.ne[3] == od * n, node, "result ne3 {} is not OD * N = {} * {}", node.ne[3], od, n,
            rule=PARAMS)
    axes = _with_out(axes, (od, node.ne[2], node.ne[1]))
    check_axes(node, axes, "zyx")
    row = ic * axes[0].k * axes[1].k * axes[2].k
    require(node.ne[0] == row, node, "result rows hold {} values, not IC * KD * KH * KW = {}", node.ne[0], row)
    if n == 0:
        return None  # an empty result
    windows = Windows(node, axes, n, ic, "im2col_3d")
    oh, ow = axes[1].out, axes[2].out
    shape = (n, ic) + tuple(a.size for a in axes)

    def run():
        x = image_values(image, ctx)[: n * ic].reshape(shape)
        dst = unflatten(node.view(), 0, (n, od))  # (N, OD, OH, OW, row)
        for block in windows:
            lo, hi = block.lo, block.hi
            dst[:, lo:hi] = Windows.gather(x, block).reshape(n, hi - lo, oh, ow, row)

    return run


@kernels.kernel("IM2COL_BACK")
def build_im2col_back(node: TensorRef, ctx: ExecContext) -> Step:
    """The image-shaped sum of an im2col-shaped gradient: each grad entry added back where
    IM2COL took its value from."""
    grad, kern = node.src(0), node.src(1)
    f32_result(node, gradient=(grad, ("F32",)))
    p = node.params()
    n, ic, axes = _im2col_geometry(node, kern, node, p)
    outs = (grad.ne[2], grad.ne[1]) if p.is_2d else (1, grad.ne[1])
    axes = _with_out(axes, outs)
    check_axes(node, axes, "yx")
    row = ic * axes[0].k * axes[1].k
    expected = (row, axes[1].out, axes[0].out, n) if p.is_2d else (row, axes[1].out, n, 1)
    require(grad.ne == expected, node, "gradient shape {} is not the im2col shape {}", grad.ne, expected)
    shape = (n, axes[0].out, axes[1].out, ic, axes[0].k, axes[1].k)

    def run():
        cols = grad.read(ctx.cache).reshape(shape).transpose(0, 3, 1, 2, 4, 5)  # (N, IC, OH, OW, KH, KW)
        out = np.zeros((n, ic, axes[0].size, axes[1].size), F32)
        scatter(out, cols, axes)
        node.write(out.reshape(node.shape))

    return run


@kernels.kernel("COL2IM_1D")
def build_col2im_1d(node: TensorRef, ctx: ExecContext) -> Step:
    """Overlap-add of columns [K * OC, T_in] into [T_out, OC], summed in float."""
    cols = node.src(0)
    kinds(node, cols, ("F32", "F16", "BF16"), "the columns")
    require(node.kind.name == cols.kind.name, node, "the result's type must be the columns' ({})", cols.kind.name)
    readable(node, cols)
    p = node.params()
    require(p.oc >= 1 and p.s0 >= 1 and p.p0 >= 0, node, "oc {} and s0 {} must be >= 1, p0 {} >= 0", p.oc, p.s0,
            p.p0, rule=PARAMS)
    k_oc, t_in = cols.ne[0], cols.ne[1]
    k = k_oc // p.oc
    require(cols.ne[2] == cols.ne[3] == 1 and k >= 1 and k * p.oc == k_oc, node,
            "columns {} are not a matrix of oc = {} blocks", cols.ne, p.oc, rule=PARAMS)
    t_out = (t_in - 1) * p.s0 + k - 2 * p.p0
    require(t_out >= 1 and node.ne == (t_out, p.oc, 1, 1), node, "result {} is not [T_out = {}, OC = {}]", node.ne,
            t_out, p.oc, rule=PARAMS)
    axis = Axis(t_out, k, p.s0, p.p0, 1, t_in)

    def run():
        c = cols.read(ctx.cache).reshape(t_in, p.oc, k).transpose(1, 0, 2)  # (OC, T_in, K)
        out = np.zeros((p.oc, t_out), F32)
        scatter(out, c, (axis,))
        node.write(out.reshape(node.shape))

    return run


# -- convolutions ---------------------------------------------------------------------------------


def _kernel_values(kern: TensorRef, ctx: ExecContext, rows: int) -> np.ndarray:
    """The kernel as (rows, taps) float32 (F16 values are exact in float)."""
    return kern.read(ctx.cache).reshape(rows, kern.n_elements // rows)


def _rounded(x: np.ndarray, kern: TensorRef) -> np.ndarray:
    """With an F16 kernel ggml converts the image to F16 before the products."""
    return x.astype(F16).astype(F32) if kern.kind.name == "F16" else x


@kernels.kernel("CONV_2D")
def build_conv_2d(node: TensorRef, ctx: ExecContext) -> Step:
    """dst[n, oc, oh, ow] = sum over (ic, kh, kw) of kernel[oc, ic, kh, kw] * image[n, ic, ih, iw]."""
    kern, image = node.src(0), node.src(1)
    f32_result(node, kernel=(kern, ("F32", "F16")), image=(image, ("F32",)))
    p = node.params()
    n, ic, oc = image.ne[3], image.ne[2], kern.ne[3]
    require(kern.ne[2] == ic and oc >= 1, node, "kernel {} is not [KW, KH, IC = {}, OC >= 1]", kern.ne, ic)
    require(node.ne[2] == oc and node.ne[3] == n, node, "result {} is not [OW, OH, OC = {}, N = {}]", node.ne, oc, n)
    axes = (Axis(image.ne[1], kern.ne[1], p.s1, p.p1, p.d1, node.ne[1]),
            Axis(image.ne[0], kern.ne[0], p.s0, p.p0, p.d0, node.ne[0]))
    check_axes(node, axes, "yx")
    row = ic * axes[0].k * axes[1].k
    ow = axes[1].out
    windows = Windows(node, axes, n, ic, "conv_2d")

    def run():
        weights = _kernel_values(kern, ctx, oc).T  # (IC*KH*KW, OC)
        x = _rounded(image.read(ctx.cache), kern)
        dst = node.view()
        for block in windows:
            lo, hi = block.lo, block.hi
            product = Windows.gather(x, block).reshape(n * (hi - lo) * ow, row) @ weights
            dst[:, :, lo:hi] = product.reshape(n, hi - lo, ow, oc).transpose(0, 3, 1, 2)

    return run


@kernels.kernel("CONV_3D")
def build_conv_3d(node: TensorRef, ctx: ExecContext) -> Step:
    """dst[n*OC + oc, od, oh, ow] = sum over (ic, kd, kh, kw) of kernel[oc*IC + ic, kd, kh, kw] *
    image[n*IC + ic, id, ih, iw]."""
    kern, image = node.src(0), node.src(1)
    f32_result(node, kernel=(kern, ("F32", "F16")), image=(image, ("F32",)))
    p = node.params()
    ic, n, oc = p.c, p.n, p.oc
    require(ic >= 1 and n >= 1 and oc >= 1, node, "c {}, n {}, oc {} must be >= 1", ic, n, oc, rule=PARAMS)
    require(kern.ne[3] == ic * oc and image.ne[3] == ic * n and node.ne[3] == oc * n, node,
            "kernel ne3 {}, image ne3 {}, result ne3 {} are not c*oc, c*n, oc*n", kern.ne[3], image.ne[3],
            node.ne[3], rule=PARAMS)
    axes = (Axis(image.ne[2], kern.ne[2], p.s2, p.p2, p.d2, node.ne[2]),
            Axis(image.ne[1], kern.ne[1], p.s1, p.p1, p.d1, node.ne[1]),
            Axis(image.ne[0], kern.ne[0], p.s0, p.p0, p.d0, node.ne[0]))
    check_axes(node, axes, "zyx")
    row = ic * axes[0].k * axes[1].k * axes[2].k
    oh, ow = axes[1].out, axes[2].out
    windows = Windows(node, axes, n, ic, "conv_3d")
    shape = (n, ic) + tuple(a.size for a in axes)

    def run():
        weights = _kernel_values(kern, ctx, oc).T  # (IC*KD*KH*KW, OC)
        x = _rounded(image.read(ctx.cache), kern).reshape(shape)
        dst = unflatten(node.view(), 0, (n, oc))  # (N, OC, OD, OH, OW)
        for block in windows:
            lo, hi = block.lo, block.hi
            product = Windows.gather(x, block).reshape(n * (hi - lo) * oh * ow, row) @ weights
            dst[:, :, lo:hi] = product.reshape(n, hi - lo, oh, ow, oc).transpose(0, 4, 1, 2, 3)

    return run


@kernels.kernel("CONV_2D_DW")
def build_conv_2d_dw(node: TensorRef, ctx: ExecContext) -> Step:
    """dst[n, c, oh, ow] = sum over (kh, kw) of kernel[c, 0, kh, kw] * image[n, c, ih, iw], in float."""
    kern, image = node.src(0), node.src(1)
    f32_result(node, kernel=(kern, ("F32", "F16")), image=(image, ("F32",)))
    p = node.params()
    n, c = image.ne[3], image.ne[2]
    require(kern.ne[2] == 1 and kern.ne[3] == c and c >= 1, node, "kernel {} is not [KW, KH, 1, C = {}]", kern.ne, c)
    channels_first = image.nb[2] == image.kind.type_size and image.nb[1] > image.nb[0] > image.nb[2]
    require(channels_first or packed(image), node,
            "the image must be contiguous or channel-most contiguous (nb {}): ggml's CPU aborts otherwise", image.nb)
    require(node.ne[2] == c and node.ne[3] == n, node, "result {} is not [OW, OH, C = {}, N = {}]", node.ne, c, n)
    axes = (Axis(image.ne[1], kern.ne[1], p.s1, p.p1, p.d1, node.ne[1]),
            Axis(image.ne[0], kern.ne[0], p.s0, p.p0, p.d0, node.ne[0]))
    check_axes(node, axes, "yx")
    taps = axes[0].k * axes[1].k
    ow = axes[1].out
    windows = Windows(node, axes, n, c, "conv_2d_dw")

    def run():
        weights = _kernel_values(kern, ctx, c)  # (C, KH*KW)
        x = image.read(ctx.cache)
        dst = node.view()
        for block in windows:
            lo, hi = block.lo, block.hi
            values = Windows.gather(x, block).reshape(n, hi - lo, ow, c, taps)
            dst[:, :, lo:hi] = (values * weights).sum(axis=-1).transpose(0, 3, 1, 2)

    return run


@kernels.kernel("CONV_TRANSPOSE_1D")
def build_conv_transpose_1d(node: TensorRef, ctx: ExecContext) -> Step:
    """dst[oc, l*s0 + k] += sum over ic of kernel[ic, oc, k] * input[ic, l]."""
    kern, inp = node.src(0), node.src(1)
    f32_result(node, kernel=(kern, ("F32", "F16")), input=(inp, ("F32",)))
    p = node.params()
    require(p.s0 >= 1 and p.p0 == 0 and p.d0 == 1, node, "stride {} must be >= 1, padding {} 0 and dilation {} 1",
            p.s0, p.p0, p.d0, rule=PARAMS)
    k, oc, ic, length = kern.ne[0], kern.ne[1], kern.ne[2], inp.ne[0]
    require(kern.ne[3] == 1 and inp.ne[2] == inp.ne[3] == 1 and inp.ne[1] == ic, node,
            "kernel {} and input {} are not [K, OC, IC] and [L, IC]", kern.ne, inp.ne)
    t_out = (length - 1) * p.s0 + k
    require(node.ne == (t_out, oc, 1, 1), node, "result {} is not [(L - 1) * s0 + K = {}, OC = {}]", node.ne, t_out,
            oc, rule=PARAMS)
    axis = Axis(t_out, k, p.s0, 0, 1, length)
    rows = blocks(node, length, oc * k, "conv_transpose_1d")

    def run():
        weights = kern.read(ctx.cache)[0].reshape(ic, oc * k)
        x = _rounded(inp.read(ctx.cache)[0, 0], kern)  # (IC, L)
        out = np.zeros((oc, t_out), F32)
        for lo, hi in rows:
            contrib = (x[:, lo:hi].T @ weights).reshape(hi - lo, oc, k)
            scatter(out, contrib.transpose(1, 0, 2), (axis,), lo)
        node.write(out.reshape(node.shape))

    return run


@kernels.kernel("CONV_TRANSPOSE_2D")
def build_conv_transpose_2d(node: TensorRef, ctx: ExecContext) -> Step:
    """dst[n, oc, h*s + kh, w*s + kw] += sum over ic of kernel[ic, oc, kh, kw] * input[n, ic, h, w]."""
    kern, inp = node.src(0), node.src(1)
    f32_result(node, kernel=(kern, ("F32", "F16")), input=(inp, ("F32",)))
    stride = node.params().stride
    require(stride >= 1, node, "stride {} must be >= 1", stride, rule=PARAMS)
    kw, kh, oc, ic = kern.ne
    w, h, n = inp.ne[0], inp.ne[1], inp.ne[3]
    require(inp.ne[2] == ic, node, "input channels {} differ from the kernel's {}", inp.ne[2], ic)
    expected = ((w - 1) * stride + kw, (h - 1) * stride + kh, oc, n)
    require(node.ne == expected, node, "result {} is not {}", node.ne, expected, rule=PARAMS)
    axes = (Axis(expected[1], kh, stride, 0, 1, h), Axis(expected[0], kw, stride, 0, 1, w))
    rows = blocks(node, h, n * w * oc * kh * kw, "conv_transpose_2d")

    def run():
        weights = kern.read(ctx.cache).reshape(ic, oc * kh * kw)
        x = _rounded(inp.read(ctx.cache), kern)  # (N, IC, H, W)
        out = np.zeros((n, oc, expected[1], expected[0]), F32)
        for lo, hi in rows:
            part = x[:, :, lo:hi].transpose(0, 2, 3, 1).reshape(n * (hi - lo) * w, ic) @ weights
            contrib = part.reshape(n, hi - lo, w, oc, kh, kw).transpose(0, 3, 1, 2, 4, 5)
            scatter(out, contrib, axes, lo)
        node.write(out)

    return run


# -- pooling -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolAxis:
    """One axis of a pooling window, clipped to the input: output o covers inputs
    [o * s - p, o * s - p + k) ∩ [0, size); `index` (out, width) walks that range from its
    start, `inside` marks the part within it, `count` is its length."""

    index: np.ndarray
    inside: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, size: int, k: int, s: int, p: int, out: int) -> "PoolAxis":
        start = np.arange(out, dtype=np.int64) * s - p
        first, last = np.maximum(start, 0), np.minimum(start + k, size)
        width = int(max(0, (last - first).max()))
        index = first[:, None] + np.arange(width, dtype=np.int64)
        inside = index < last[:, None]
        return cls(np.minimum(index, size - 1), inside, np.maximum(last - first, 0))


def _pool_params(node: TensorRef, p, dims: int) -> None:
    require(p.op in (POOL_MAX, POOL_AVG), node, "pool op {} is neither MAX (0) nor AVG (1)", p.op, rule=PARAMS)
    for d in range(dims):
        k, s, pad = getattr(p, f"k{d}"), getattr(p, f"s{d}"), getattr(p, f"p{d}")
        require(k >= 1 and s >= 1 and pad >= 0, node, "axis {}: window {} and stride {} must be >= 1, padding {} >= 0",
                d, k, s, pad, rule=PARAMS)


def _pool_out(node: TensorRef, size: int, k: int, s: int, pad: int, out: int, name: str) -> None:
    span = size + 2 * pad - k
    require(span >= 0 and out == span // s + 1, node, "axis {}: the result has {} positions where the geometry "
            "gives {}", name, out, span // s + 1 if span >= 0 else 0, rule=PARAMS)


def _pool_blocks(node: TensorRef, planes: int, rows: int, per_row: int) -> list[tuple[int, int, int, int]]:
    """(plane lo, plane hi, row lo, row hi) blocks of about CHUNK window elements."""
    require(per_row <= SCRATCH, node, "pooling windows need {} elements per output row (at most {})", per_row,
            SCRATCH, rule=PARAMS)
    per_plane = rows * per_row
    if per_plane <= CHUNK:
        step = max(1, CHUNK // max(per_plane, 1))
        return [(lo, min(lo + step, planes), 0, rows) for lo in range(0, planes, step)]
    step = max(1, CHUNK // max(per_row, 1))
    return [(q, q + 1, lo, min(lo + step, rows)) for q in range(planes) for lo in range(0, rows, step)]


def _pool(node: TensorRef, ctx: ExecContext, src: TensorRef, op: int, ys: PoolAxis, xs: PoolAxis,
          divisor: np.ndarray | np.float32, height: int) -> Step:
    """dst (planes, OH, OW) from windows of src (planes, height, W)."""
    planes = src.n_elements // (src.ne[0] * height)
    oh, ow = len(ys.count), len(xs.count)
    per_row = ow * ys.index.shape[1] * xs.index.shape[1]
    parts = _pool_blocks(node, planes, oh, per_row)

    def run():
        x = src.read(ctx.cache).reshape(planes, height, src.ne[0])
        out = np.empty((planes, oh, ow), F32)
        for q0, q1, lo, hi in parts:
            index = (slice(q0, q1), ys.index[lo:hi, :, None, None], xs.index[None, None])
            inside = ys.inside[lo:hi, :, None, None] & xs.inside[None, None]
            values = x[index]  # (planes, rows, KH, OW, KW)
            if op == POOL_MAX:
                out[q0:q1, lo:hi] = np.max(values, axis=(2, 4), initial=-FLT_MAX, where=inside)
            else:
                total = np.sum(values, axis=(2, 4), where=inside, dtype=F32)
                part = divisor[lo:hi] if isinstance(divisor, np.ndarray) else divisor
                out[q0:q1, lo:hi] = total / part
        node.write(out.reshape(node.shape))

    return run


@kernels.kernel("POOL_1D")
def build_pool_1d(node: TensorRef, ctx: ExecContext) -> Step:
    """Max or mean of each window of each row (the mean over the elements inside the row)."""
    src = node.src(0)
    f32_result(node, input=(src, ("F32", "F16")))
    p = node.params()
    _pool_params(node, p, 1)
    require(min(src.ne) >= 1, node, "empty input {}", src.ne)
    require(node.ne[1:] == src.ne[1:], node, "result {} and input {} differ past dimension 0", node.ne, src.ne)
    _pool_out(node, src.ne[0], p.k0, p.s0, p.p0, node.ne[0], "x")
    xs = PoolAxis.of(src.ne[0], p.k0, p.s0, p.p0, node.ne[0])
    ys = PoolAxis(np.zeros((1, 1), np.int64), np.ones((1, 1), bool), np.ones(1, np.int64))
    count = xs.count.astype(F32)
    divisor = np.where(count > 0, count, np.inf).astype(F32)[None, :]  # an empty window averages to 0
    return _pool(node, ctx, src, p.op, ys, xs, divisor, 1)


@kernels.kernel("POOL_2D")
def build_pool_2d(node: TensorRef, ctx: ExecContext) -> Step:
    """Max of each window (padding ignored), or its sum over k0 * k1 (padding counts as 0)."""
    src = node.src(0)
    f32_result(node, input=(src, ("F32", "F16")))
    p = node.params()
    _pool_params(node, p, 2)
    require(min(src.ne) >= 1, node, "empty input {}", src.ne)
    require(node.ne[2:] == src.ne[2:], node, "result {} and input {} differ past dimension 1", node.ne, src.ne)
    _pool_out(node, src.ne[0], p.k0, p.s0, p.p0, node.ne[0], "x")
    _pool_out(node, src.ne[1], p.k1, p.s1, p.p1, node.ne[1], "y")
    xs = PoolAxis.of(src.ne[0], p.k0, p.s0, p.p0, node.ne[0])
    ys = PoolAxis.of(src.ne[1], p.k1, p.s1, p.p1, node.ne[1])
    return _pool(node, ctx, src, p.op, ys, xs, F32(p.k0 * p.k1), src.ne[1])


@kernels.kernel("POOL_2D_BACK")
def build_pool_2d_back(node: TensorRef, ctx: ExecContext) -> Step:
    """The gradient of POOL_2D: each grad entry added to the first maximum of its window in
    af (MAX), or grad / (k0 k1) added to each element of its window inside the plane (AVG)."""
    grad, af = node.src(0), node.src(1)
    kinds(node, grad, ("F32",), "the gradient")
    kinds(node, node, ("F32",), "the result")
    kinds(node, af, ("F32",), "the forward input")
    readable(node, grad, af)
    p = node.params()
    _pool_params(node, p, 2)
    require(af.ne == node.ne and grad.ne[2:] == node.ne[2:], node, "gradient {}, forward input {} and result {} "
            "do not agree", grad.ne, af.ne, node.ne)
    require(min(node.ne) >= 1 and min(grad.ne) >= 1, node, "empty result {} or gradient {}", node.ne, grad.ne)
    width, height = node.ne[0], node.ne[1]
    xs = PoolAxis.of(width, p.k0, p.s0, p.p0, grad.ne[0])
    ys = PoolAxis.of(height, p.k1, p.s1, p.p1, grad.ne[1])
    planes = node.n_elements // (width * height)
    ph, pw = grad.ne[1], grad.ne[0]
    wy, wx = ys.index.shape[1], xs.index.shape[1]
    parts = _pool_blocks(node, planes, ph, pw * wy * wx)
    ka = F32(p.k0 * p.k1)

    def run():
        g = grad.read(ctx.cache).reshape(planes, ph, pw)
        forward = af.read(ctx.cache).reshape(planes, height, width)
        out = np.zeros(planes * height * width, np.float64)
        for q0, q1, lo, hi in parts:
            iy, ix = ys.index[lo:hi, None, :, None], xs.index[None, :, None, :]  # (rows, PW, KH, KW)
            inside = ys.inside[lo:hi, None, :, None] & xs.inside[None, :, None, :]
            base = np.arange(q0, q1, dtype=np.int64)[:, None, None, None, None] * (height * width)
            where = base + iy * width + ix  # (planes, rows, PW, KH, KW)
            if p.op == POOL_MAX:
                values = np.where(inside, forward[q0:q1][:, iy, ix], -np.inf).reshape(q1 - q0, hi - lo, pw, wy * wx)
                first = values.argmax(axis=-1)[..., None]
                chosen = np.take_along_axis(values, first, -1)[..., 0] > -FLT_MAX
                target = np.take_along_axis(where.reshape(values.shape), first, -1)[..., 0]
                out += np.bincount(target[chosen], g[q0:q1, lo:hi][chosen], out.size)
            else:
                share = np.broadcast_to((g[q0:q1, lo:hi] / ka)[..., None, None], where.shape)
                mask = np.broadcast_to(inside, where.shape)
                out += np.bincount(where[mask], share[mask], out.size)
        node.write(out.astype(F32).reshape(node.shape))

    return run


# -- resampling and embeddings -------------------------------------------------------------------


def _nearest(count: int, scale: np.float32, size: int) -> np.ndarray:
    """ggml's nearest source index of each of `count` outputs: trunc(i / scale) in float."""
    at = (np.arange(count).astype(F32) / scale).astype(np.int64)
    return np.clip(at, 0, size - 1)


def _bicubic_weights(t: np.ndarray) -> tuple[np.ndarray, ...]:
    """PyTorch's cubic convolution weights (a = -0.75) of the four taps around offset t, in float."""
    a = F32(-0.75)

    def near(x):  # |x| <= 1
        return ((a + F32(2)) * x - (a + F32(3))) * x * x + F32(1)

    def far(x):  # 1 < |x| < 2
        return ((a * x - F32(5) * a) * x + F32(8) * a) * x - F32(4) * a

    one, two = F32(1), F32(2)
    return far(t + one), near(t), near(one - t), far(two - t)


def _aa_band(out: int, size: int, scale: np.float32, offset: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(source index, weight) of each output's antialiasing triangle band, (out, width)."""
    support = max(F32(1), F32(1) / scale)
    inverse = F32(1) / support
    centre = (np.arange(out).astype(F32) + offset) / scale
    first = np.maximum((centre - support + offset).astype(np.int64), 0)
    last = np.minimum((centre + support + offset).astype(np.int64), size)
    width = int(max(1, (last - first).max()))
    index = first[:, None] + np.arange(width, dtype=np.int64)
    inside = index < last[:, None]
    weight = np.maximum(F32(1) - np.abs((index.astype(F32) - centre[:, None] + offset) * inverse), F32(0))
    return np.clip(index, 0, size - 1), np.where(inside, weight, F32(0)).astype(F32)


@kernels.kernel("UPSCALE")
def build_upscale(node: TensorRef, ctx: ExecContext) -> Step:
    """Resample to the result's shape: x and y nearest, bilinear, bicubic or antialiased
    bilinear (with or without aligned corners); dimensions 2 and 3 nearest."""
    src = node.src(0)
    f32_result(node, input=(src, ("F32",)))
    flags = node.params().mode
    mode = flags & 0xFF
    require(mode in (NEAREST, BILINEAR, BICUBIC) and flags & ~0x3FF == 0, node,
            "scale mode {:#x} is not NEAREST, BILINEAR or BICUBIC with ALIGN_CORNERS / ANTIALIAS", flags, rule=PARAMS)
    require(min(src.ne) >= 1 and min(node.ne) >= 1, node, "empty input {} or result {}", src.ne, node.ne)
    ne, ns = node.ne, src.ne
    scale = [F32(ne[i]) / F32(ns[i]) for i in range(4)]
    offset = F32(0.5)
    if flags & ALIGN_CORNERS:
        offset = F32(0)
        for i in (0, 1):
            if ne[i] > 1 and ns[i] > 1:
                scale[i] = F32(ne[i] - 1) / F32(ns[i] - 1)
    # planes: compute on the source planes the result uses, spread them at the end
    plane3, plane2 = _nearest(ne[3], scale[3], ns[3]), _nearest(ne[2], scale[2], ns[2])
    used3, spread3 = np.unique(plane3, return_inverse=True)
    used2, spread2 = np.unique(plane2, return_inverse=True)
    planes = len(used3) * len(used2)
    step = _upscale_step(node, mode, flags, ne, ns, scale, offset, planes)

    def run():
        x = src.read(ctx.cache)[np.ix_(used3, used2)]  # (used3, used2, H, W)
        node.write(step(x)[np.ix_(spread3.ravel(), spread2.ravel())])

    return run


def _upscale_step(node: TensorRef, mode: int, flags: int, ne, ns, scale, offset, planes: int):
    """The x/y resampling of source planes (..., H, W) -> (..., H', W')."""
    if mode == NEAREST:
        ys, xs = _nearest(ne[1], scale[1], ns[1]), _nearest(ne[0], scale[0], ns[0])
        return lambda x: x[..., ys[:, None], xs[None, :]]
    if mode == BILINEAR and flags & ANTIALIAS:
        yi, yw = _aa_band(ne[1], ns[1], scale[1], offset)
        xi, xw = _aa_band(ne[0], ns[0], scale[0], offset)
        rows, row_of = np.unique(yi, return_inverse=True)
        row_of = row_of.reshape(yi.shape)
        require(planes * len(rows) * xi.size <= SCRATCH and planes * yi.size * ne[0] <= SCRATCH, node,
                "antialiased resampling needs too much scratch", rule=PARAMS)
        total = (yw.sum(axis=1, dtype=F32)[:, None] * xw.sum(axis=1, dtype=F32)[None, :])
        total = np.where(total > 0, total, F32(1)).astype(F32)

        def antialias(x):
            across = (x[..., rows[:, None, None], xi] * xw).sum(axis=-1, dtype=F32)  # (..., rows, W')
            down = (across[..., row_of, :] * yw[..., None]).sum(axis=-2, dtype=F32)  # (..., H', W')
            return down / total

        return antialias
    axes = []
    for i in (1, 0):
        at = (np.arange(ne[i]).astype(F32) + offset) / scale[i] - offset
        start = np.floor(at).astype(np.int64)
        axes.append((at, start))
    if mode == BILINEAR:
        (y, y0), (x, x0) = axes
        y0c, y1c = np.clip(y0, 0, ns[1] - 1), np.clip(y0 + 1, 0, ns[1] - 1)
        x0c, x1c = np.clip(x0, 0, ns[0] - 1), np.clip(x0 + 1, 0, ns[0] - 1)
        dy = np.clip(y - y0c.astype(F32), F32(0), F32(1))[:, None]
        dx = np.clip(x - x0c.astype(F32), F32(0), F32(1))[None, :]
        one = F32(1)

        def bilinear(v):
            a, b = v[..., y0c[:, None], x0c[None, :]], v[..., y0c[:, None], x1c[None, :]]
            c, d = v[..., y1c[:, None], x0c[None, :]], v[..., y1c[:, None], x1c[None, :]]
            return a * (one - dx) * (one - dy) + b * dx * (one - dy) + c * (one - dx) * dy + d * dx * dy

        return bilinear
    (y, y0), (x, x0) = axes
    wy = _bicubic_weights((y - y0.astype(F32)).astype(F32))
    wx = _bicubic_weights((x - x0.astype(F32)).astype(F32))
    cols = [np.clip(x0 + j - 1, 0, ns[0] - 1) for j in range(4)]
    taps = np.stack([np.clip(y0 + j - 1, 0, ns[1] - 1) for j in range(4)], axis=1)  # (H', 4)
    rows, row_of = np.unique(taps, return_inverse=True)
    row_of = row_of.reshape(taps.shape)
    require(planes * len(rows) * ne[0] <= SCRATCH, node, "bicubic resampling needs too much scratch", rule=PARAMS)

    def bicubic(v):
        band = v[..., rows, :]
        across = (band[..., cols[0]] * wx[0] + band[..., cols[1]] * wx[1] + band[..., cols[2]] * wx[2]
                  + band[..., cols[3]] * wx[3])  # (..., rows, W')
        w = [weight[:, None] for weight in wy]
        return (across[..., row_of[:, 0], :] * w[0] + across[..., row_of[:, 1], :] * w[1]
                + across[..., row_of[:, 2], :] * w[2] + across[..., row_of[:, 3], :] * w[3])

    return bicubic


@kernels.kernel("TIMESTEP_EMBEDDING")
def build_timestep_embedding(node: TensorRef, ctx: ExecContext) -> Step:
    """Row t: cos(t * f_j) for j < dim/2, then sin(t * f_j), f_j = exp(-ln(max_period) * j / (dim/2)),
    and a trailing 0 when dim is odd; in float, as ggml."""
    src = node.src(0)
    f32_result(node, timesteps=(src, ("F32",)))
    p = node.params()
    require(p.dim >= 0 and node.ne == (p.dim, src.ne[0], 1, 1), node, "result {} is not [dim = {}, {}]", node.ne,
            p.dim, src.ne[0], rule=PARAMS)
    half = p.dim // 2
    log_period = F32(np.log(np.float64(F32(p.max_period)))) if p.max_period > 0 else None
    j = np.arange(half).astype(F32)
    if log_period is None:  # logf of 0 or less: -inf or nan, as in C
        log_period = F32(-np.inf) if p.max_period == 0 else F32(np.nan)
    freq = np.exp(((-log_period) * j / F32(max(half, 1))).astype(np.float64)).astype(F32)

    def run():
        t = src.view()[0, 0, 0][:, None]
        arg = (t * freq).astype(np.float64)
        out = np.zeros((src.ne[0], p.dim), F32)
        out[:, :half] = np.cos(arg)
        out[:, half : 2 * half] = np.sin(arg)
        node.write(out)

    return run


# -- SAM's window and relative-position helpers --------------------------------------------------


@kernels.kernel("WIN_PART")
def build_win_part(node: TensorRef, ctx: ExecContext) -> Step:
    """a [C, W, H] cut into w x w windows [C, w, w, npx * npy], row-major over windows, zeros past a."""
    src = node.src(0)
    f32_result(node, input=(src, ("F32",)))
    p = node.params()
    npx, npy, w = p.npx, p.npy, p.w
    require(npx >= 1 and npy >= 1 and w >= 1, node, "npx {}, npy {}, w {} must be >= 1", npx, npy, w, rule=PARAMS)
    require(src.ne[3] == 1 and node.ne == (src.ne[0], w, w, npx * npy), node,
            "input {} and result {} are not [C, W, H, 1] and [C, w, w, npx * npy]", src.ne, node.ne, rule=PARAMS)
    c, width, height = src.ne[0], src.ne[1], src.ne[2]
    cover_y, cover_x = min(height, npy * w), min(width, npx * w)

    def run():
        grid = np.zeros((npy * w, npx * w, c), F32)
        grid[:cover_y, :cover_x] = src.read(ctx.cache)[0, :cover_y, :cover_x]
        windows = grid.reshape(npy, w, npx, w, c).transpose(0, 2, 1, 3, 4)
        node.write(windows.reshape(node.shape))

    return run


@kernels.kernel("WIN_UNPART")
def build_win_unpart(node: TensorRef, ctx: ExecContext) -> Step:
    """Windows [C, w, w, n] put back side by side into [C, W, H], the padding dropped."""
    src = node.src(0)
    f32_result(node, input=(src, ("F32",)))
    w = node.params().w
    require(w >= 1, node, "w {} must be >= 1", w, rule=PARAMS)
    c, width, height = node.ne[0], node.ne[1], node.ne[2]
    npx, npy = _ceil_div(width, w), _ceil_div(height, w)
    require(node.ne[3] == 1 and src.ne[0] == c and src.ne[1] >= w and src.ne[2] >= w and src.ne[3] >= npx * npy,
            node, "windows {} cannot cover a [{}, {}, {}] result with w = {}", src.ne, c, width, height, w,
            rule=PARAMS)

    def run():
        windows = src.read(ctx.cache)[: npx * npy, :w, :w]  # (n, w, w, C)
        grid = windows.reshape(npy, npx, w, w, c).transpose(0, 2, 1, 3, 4).reshape(npy * w, npx * w, c)
        node.write(grid[:height, :width][None])

    return run


@kernels.kernel("GET_REL_POS")
def build_get_rel_pos(node: TensorRef, ctx: ExecContext) -> Step:
    """dst[q, k] = a[(w - 1 - k) + q]: the 16-bit elements copied as they are."""
    src = node.src(0)
    kinds(node, src, ("F16", "BF16"), "the input")
    kinds(node, node, ("F16",), "the result")
    readable(node, src)
    c, w, q = node.ne[0], node.ne[1], node.ne[2]
    require(node.ne[3] == 1 and src.ne[0] == c and src.ne[1] >= w + q - 1, node,
            "rows of {} cannot fill a [{}, {}, {}] result", src.ne, c, w, q)
    rows = (w - 1 - np.arange(w))[None, :] + np.arange(q)[:, None]  # (q, w), all in [0, w + q - 1)

    def run():
        bits = src.view()[0, 0].view(np.uint16)
        node.view().view(np.uint16)[0] = bits[rows]

    return run


@kernels.kernel("ADD_REL_POS")
def build_add_rel_pos(node: TensorRef, ctx: ExecContext) -> Step:
    """a viewed as [w, w, rows]: dst[r, i, j] = a[r, i, j] + ph[r, i] + pw[r, j], added in ggml's order."""
    a, pw, ph = node.src(0), node.src(1), node.src(2)
    for tensor, role in ((a, "a"), (pw, "pw"), (ph, "ph"), (node, "the result")):
        kinds(node, tensor, ("F32",), role)
    readable(node, a, pw, ph)
    w = pw.ne[0]
    require(pw.ne == ph.ne and node.ne == a.ne and a.ne[3] == 1, node, "pw {}, ph {}, a {}, result {} do not agree",
            pw.ne, ph.ne, a.ne, node.ne)
    require(a.ne[0] == w * w and a.ne[1] == pw.ne[1] * pw.ne[2] and a.ne[2] == pw.ne[3], node,
            "a {} is not [w * w, A * B, heads] for pw {}", a.ne, pw.ne)
    rows = a.ne[1] * a.ne[2]
    ph_first = np.arange(w)[:, None] <= np.arange(w)[None, :]  # the add of ph comes first where i <= j

    start = node if node.params().inplace else a  # inplace: ggml adds into the result as it is, a not copied

    def run():
        scores = start.read(ctx.cache).reshape(rows, w, w)
        row_term = ph.read(ctx.cache).reshape(rows, w)[:, :, None]
        col_term = pw.read(ctx.cache).reshape(rows, w)[:, None, :]
        out = np.where(ph_first, (scores + row_term) + col_term, (scores + col_term) + row_term)
        node.write(out.reshape(node.shape))

    return run
