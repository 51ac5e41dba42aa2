"""Convolution, pooling and image resampling: im2col and its inverses, direct convolutions
(2-D, 3-D, depthwise, transposed), pooling, upscaling, timestep embeddings, and the window
and relative-position helpers of SAM's vision encoder.

Geometry in ggml order: dimension 0 is the width (x), 1 the height (y), 2 the depth or the
channels.  An output size follows ggml: (in + 2 p - d (k - 1) - 1) / s + 1, with C's
truncating division; the result's ne must be that size."""

from .spec import Draw, OpSpec, Param, Source

_POOL = "enum:MAX=0,AVG=1"
_SCALE_MODE = (
    "scale mode in the low byte (NEAREST=0, BILINEAR=1, BICUBIC=2) or'ed with flags: "
    "ALIGN_CORNERS=0x100 (x and y scale (out - 1) / (in - 1), no half-pixel offset), "
    "ANTIALIAS=0x200 (BILINEAR only: triangle filter widened to the downscale factor)"
)


def _geometry(*axes: str, note: dict[str, str] | None = None) -> tuple[Param, ...]:
    """s, p, d words for `axes` ("0", "1", "2"), laid out all strides, then all paddings,
    then all dilations; `note` adds a remark to an axis's words."""
    params, index = [], 0
    for name, meaning, low in (
        ("s", "stride", 1),
        ("p", "padding (zeros) before and after", 0),
        ("d", "dilation (distance between kernel taps)", 1),
    ):
        for axis in axes:
            remark = (note or {}).get(axis, "")
            params.append(Param(index, f"{name}{axis}", "i32", f"{meaning}, dimension {axis}{remark}", low))
            index += 1
    return tuple(params)


_IM2COL_PARAMS = _geometry("0", "1", note={"1": " (2-D only; 1-D leaves it 0)"}) + (
    Param(6, "is_2d", "i32", "1: 2-D; 0: 1-D (image dimension 1 is the channels)", 0, 1),
)

SPECS = (
    OpSpec(
        name="IM2COL",
        sources=(
            Source("kernel", "[KW, KH, IC, OC] (1-D: [KW, IC, OC]); only its shape is read"),
            Source("image", "[IW, IH, IC, N] (1-D: [IW, IC, N])"),
        ),
        params=_IM2COL_PARAMS,
        types="result F32 from an F32 image; result F16 from an F16 or F32 image (ggml's CPU asserts both; 3.6.1's "
        "ggml also asserts an F16 kernel for an F16 result)",
        result="[IC * KH * KW, OW, OH, N] (1-D: [IC * KW, OW, N])",
        semantics="every kernel-sized window of the image as one row, (ic, kh, kw) order, zeros where it "
        "reaches into the padding",
    ),
    OpSpec(
        name="IM2COL_BACK",
        sources=(
            Source("grad", "F32 [IC * KH * KW, OW, OH, N], the gradient of an IM2COL result"),
            Source("kernel", "[KW, KH, ...] (1-D: [KW, ...]); only its shape is read"),
        ),
        params=_IM2COL_PARAMS,
        types="grad F32; result F32",
        result="the image's shape [IW, IH, IC, N] (1-D: [IW, IC, N])",
        semantics="each image element the sum of the grad entries IM2COL copied it to",
    ),
    OpSpec(
        name="IM2COL_3D",
        sources=(
            Source("kernel", "[KW, KH, KD, IC * OC]; only its shape is read"),
            Source("image", "[IW, IH, ID, IC * N]"),
        ),
        params=_geometry("0", "1", "2") + (Param(9, "ic", "i32", "input channels IC (image ne3 = IC * N)", 1),),
        types="image F32 (F16, BF16 read as float); result F32 or F16",
        result="[IC * KD * KH * KW, OW, OH, OD * N]",
        semantics="every kernel-sized 3-D window of the image as one row, (ic, kd, kh, kw) order, zeros in the "
        "padding",
    ),
    OpSpec(
        name="COL2IM_1D",
        sources=(Source("cols", "[K * OC, T_in], contiguous"),),
        params=(
            Param(0, "s0", "i32", "stride", 1),
            Param(1, "oc", "i32", "output channels OC", 1),
            Param(2, "p0", "i32", "samples cropped from each end", 0),
        ),
        types="F32, F16, BF16 (cols and result alike); summed in float",
        result="[(T_in - 1) * s0 + K - 2 * p0, OC]",
        semantics="overlap-add: column t's block oc (K samples) added at t * s0 - p0 of channel oc (0.3.36 on)",
    ),
    OpSpec(
        name="CONV_2D",
        sources=(Source("kernel", "F32 or F16 [KW, KH, IC, OC], contiguous"), Source("image", "F32 [IW, IH, IC, N]")),
        params=_geometry("0", "1"),
        types="kernel F32 or F16 (F16: the image is rounded to F16 first); image and result F32",
        result="[OW, OH, OC, N]",
        semantics="direct 2-D convolution (cross-correlation), zero padding",
    ),
    OpSpec(
        name="CONV_3D",
        sources=(
            Source("kernel", "F32 or F16 [KW, KH, KD, IC * OC] (ne3 = oc * IC + ic), contiguous"),
            Source("image", "F32 [IW, IH, ID, IC * N] (ne3 = n * IC + ic)"),
        ),
        params=_geometry("0", "1", "2")
        + (
            Param(9, "c", "i32", "input channels IC", 1),
            Param(10, "n", "i32", "batch N", 1),
            Param(11, "oc", "i32", "output channels OC", 1),
        ),
        types="kernel F32 or F16 (F16: the image is rounded to F16 first); image and result F32",
        result="[OW, OH, OD, OC * N] (ne3 = n * OC + oc)",
        semantics="direct 3-D convolution, zero padding",
    ),
    OpSpec(
        name="CONV_2D_DW",
        sources=(Source("kernel", "F32 or F16 [KW, KH, 1, C]"), Source("image", "F32 [IW, IH, C, N]")),
        params=_geometry("0", "1"),
        types="kernel F32 or F16 (0.3.20: F32); image and result F32",
        result="[OW, OH, C, N] (channel-most-contiguous strides when the image has them)",
        semantics="depthwise 2-D convolution: channel c convolved with its own kernel, float sums",
    ),
    OpSpec(
        name="CONV_TRANSPOSE_1D",
        sources=(Source("kernel", "F32 or F16 [K, OC, IC]"), Source("input", "F32 [L, IC]")),
        params=(
            Param(0, "s0", "i32", "stride", 1),
            Param(1, "p0", "i32", "padding (ggml asserts 0)", 0, 0),
            Param(2, "d0", "i32", "dilation (ggml asserts 1)", 1, 1),
        ),
        types="kernel F32 or F16 (F16: the input is rounded to F16 first); input and result F32",
        result="[(L - 1) * s0 + K, OC]",
        semantics="transposed convolution: input sample l of every channel spreads kernel[., oc, ic] * x at l * s0",
    ),
    OpSpec(
        name="CONV_TRANSPOSE_2D",
        sources=(Source("kernel", "F32 or F16 [KW, KH, OC, IC]"), Source("input", "F32 [W, H, IC, N]")),
        params=(Param(0, "stride", "i32", "stride of both dimensions", 1),),
        types="kernel F32 or F16 (F16: the input is rounded to F16 first); input and result F32",
        result="[(W - 1) * stride + KW, (H - 1) * stride + KH, OC, N]",
        semantics="2-D transposed convolution without padding (0.3.20 computes batch 0 only)",
    ),
    OpSpec(
        name="POOL_1D",
        sources=(Source("a", "F32 or F16 rows"),),
        params=(
            Param(0, "op", _POOL, "max or average"),
            Param(1, "k0", "i32", "window", 1),
            Param(2, "s0", "i32", "stride", 1),
            Param(3, "p0", "i32", "padding", 0),
        ),
        types="a F32 or F16; result F32",
        result="[(a0 + 2 p0 - k0) / s0 + 1, a1, a2, a3]",
        semantics="max, or mean over the window's elements inside the row (padding not counted)",
    ),
    OpSpec(
        name="POOL_2D",
        sources=(Source("a", "F32 or F16 planes [W, H, ...]"),),
        params=(
            Param(0, "op", _POOL, "max or average"),
            Param(1, "k0", "i32", "window width", 1),
            Param(2, "k1", "i32", "window height", 1),
            Param(3, "s0", "i32", "stride x", 1),
            Param(4, "s1", "i32", "stride y", 1),
            Param(5, "p0", "i32", "padding x", 0),
            Param(6, "p1", "i32", "padding y", 0),
        ),
        types="a F32 or F16; result F32",
        result="[(a0 + 2 p0 - k0) / s0 + 1, (a1 + 2 p1 - k1) / s1 + 1, a2, a3]",
        semantics="max (padding ignored), or the window's sum over k0 * k1 (padding counts as zeros)",
    ),
    OpSpec(
        name="POOL_2D_BACK",
        sources=(
            Source("grad", "F32 [PW, PH, C, N], the gradient of a POOL_2D result"),
            Source("af", "the forward input [W, H, C, N], same type as the result"),
        ),
        params=(
            Param(0, "op", _POOL, "max or average"),
            Param(1, "k0", "i32", "window width", 1),
            Param(2, "k1", "i32", "window height", 1),
            Param(3, "s0", "i32", "stride x", 1),
            Param(4, "s1", "i32", "stride y", 1),
            Param(5, "p0", "i32", "padding x", 0),
            Param(6, "p1", "i32", "padding y", 0),
        ),
        types="grad F32; af and result F32",
        result="as af",
        semantics="each grad entry added to its window's first maximum of af (MAX), or spread as grad / (k0 k1) "
        "over the window's elements inside the plane (AVG)",
    ),
    OpSpec(
        name="UPSCALE",
        sources=(Source("a", "F32 [W, H, C, N]"),),
        params=(Param(0, "mode", "i32", _SCALE_MODE),),
        types="F32 (a and result)",
        result="any [W', H', C', N']; scale factors are the float ratios of the sizes",
        semantics="resampled to the result's size: nearest in every dimension, or bilinear / bicubic (PyTorch's "
        "a = -0.75) over x and y with borders clamped; C and N always nearest",
    ),
    OpSpec(
        name="TIMESTEP_EMBEDDING",
        sources=(Source("timesteps", "F32 [T] (only row 0 is read)"),),
        params=(Param(0, "dim", "i32", "embedding size", 0), Param(1, "max_period", "i32", "longest period")),
        types="timesteps F32; result F32",
        result="[dim, T]",
        semantics="row t: cos(t f_j) for j < dim / 2, then sin(t f_j), f_j = exp(-ln(max_period) j / (dim / 2)); a "
        "trailing 0 when dim is odd",
    ),
    OpSpec(
        name="WIN_PART",
        sources=(Source("a", "F32 [C, W, H, 1]"),),
        params=(
            Param(0, "npx", "i32", "windows across", 1),
            Param(1, "npy", "i32", "windows down", 1),
            Param(2, "w", "i32", "window side", 1),
        ),
        types="F32 (a and result)",
        result="[C, w, w, npx * npy]",
        semantics="a cut into w x w windows, row-major over windows, zeros past a's edge",
    ),
    OpSpec(
        name="WIN_UNPART",
        sources=(Source("a", "F32 [C, w, w, windows]"),),
        params=(Param(0, "w", "i32", "window side", 1),),
        types="F32 (a and result)",
        result="[C, W, H, 1] (any W, H the windows cover)",
        semantics="the inverse of WIN_PART: windows put back side by side, the padding dropped",
    ),
    OpSpec(
        name="GET_REL_POS",
        sources=(Source("a", "F16 or BF16 [C, 2 w - 1]"),),
        params=(),
        types="a F16 or BF16; result F16 (BF16 bits are copied as they are)",
        result="[C, w, w]",
        semantics="result[q, k] = a[(w - 1 - k) + q] (relative-position rows, SAM)",
    ),
    OpSpec(
        name="ADD_REL_POS",
        sources=(
            Source("a", "F32 attention scores [w * w, A * B, heads]"),
            Source("pw", "F32 [w, A, B, heads]"),
            Source("ph", "F32 [w, A, B, heads]"),
        ),
        params=(Param(0, "inplace", "bool", "the result is a's memory: ggml adds into it without copying a first",
                      inert=True),),
        types="F32 (every source and the result)",
        result="as a",
        semantics="a viewed as [w, w, rows]: result[r, i, j] = a[r, i, j] + ph[r, i] + pw[r, j] (SAM's decomposed "
        "relative positions)",
    ),
)

# Geometry of a drawn convolution: per axis a kernel size, the stride, padding and dilation
# words, an input long enough for one output, and the output size ggml computes (`on`: 0 for
# an axis a 1-D op leaves unused, its words 0).
def _axis(axis: str, kernel: str, size: str, out: str, *, on: str = "1") -> str:
    return (f"{kernel}=1..3*{on}+1-{on} s{axis}={on}..2*{on} p{axis}=0..{on} d{axis}={on}..2*{on} "
            f"{size}=max(1,d{axis}*({kernel}-1)+1-2*p{axis})..d{axis}*({kernel}-1)+5 "
            f"{out}=({size}+2*p{axis}-d{axis}*({kernel}-1)-1)//max(1,s{axis})+1")


_2D = f"{_axis('0', 'KW', 'IW', 'OW')} {_axis('1', 'KH', 'IH', 'OH')}"
_3D = f"{_2D} {_axis('2', 'KD', 'ID', 'OD')}"
_IM2COL = f"is_2d=0|1 {_axis('0', 'KW', 'IW', 'OW')} {_axis('1', 'KH', 'IH', 'OH', on='is_2d')} IC=1..3 OC=1..2 N=1..2"
_POOL = ("k0=1..3 k1=1..3 s0=1..2 s1=1..2 p0=0..k0//2 p1=0..k1//2 W=max(1,k0-2*p0)..k0+5 H=max(1,k1-2*p1)..k1+4 "
         "PW=(W+2*p0-k0)//s0+1 PH=(H+2*p1-k1)//s1+1 C=1..3 N=1..2")

# How to draw a valid node of each op (differential fuzzing; see spec.Draw).  An F16 result of
# IM2COL takes an F16 kernel with dense rows (0.3.20 asserts both); CONV_TRANSPOSE_2D computes
# one image (0.3.20 computes batch 0 only).
DRAWS = {
    "IM2COL": Draw(
        f"{_IM2COL} RT=F32|F16 KT=RT|F16",
        ("[KW, KH if is_2d else IC, IC if is_2d else OC, OC if is_2d else 1] KT rows",
         "[IW, IH if is_2d else IC, IC if is_2d else N, N if is_2d else 1] F32 rows cont:is_2d"),
        "[IC*KH*KW, OW, OH if is_2d else N, N if is_2d else 1] RT",
    ),
    "IM2COL_BACK": Draw(
        _IM2COL,
        ("[IC*KH*KW, OW, OH if is_2d else N, N if is_2d else 1] F32 cont",
         "[KW, KH if is_2d else IC, IC if is_2d else OC, OC if is_2d else 1] F32"),
        "[IW, IH if is_2d else IC, IC if is_2d else N, N if is_2d else 1] F32",
    ),
    "IM2COL_3D": Draw(
        f"{_3D} ic=1..2 OC=1..2 N=1..2 RT=F32|F16 KT=RT|F16",
        ("[KW, KH, KD, ic*OC] KT", "[IW, IH, ID, ic*N] F32 rows"),
        "[ic*KD*KH*KW, OW, OH, OD*N] RT",
        nmse=5e-4,
    ),
    "COL2IM_1D": Draw("K=1..4 oc=1..3 Tin=1..5 s0=1..3 p0=0..((Tin-1)*s0+K-1)//2", ("[K*oc, Tin] F32 cont",),
                      "[(Tin-1)*s0+K-2*p0, oc] F32"),
    "CONV_2D": Draw(f"{_2D} IC=1..3 OC=1..3 N=1..2", ("[KW, KH, IC, OC] F32|F16 cont", "[IW, IH, IC, N] F32"),
                    "[OW, OH, OC, N] F32", nmse=5e-4),
    "CONV_3D": Draw(f"{_3D} c=1..2 n=1..2 oc=1..2", ("[KW, KH, KD, c*oc] F32|F16 cont", "[IW, IH, ID, c*n] F32"),
                    "[OW, OH, OD, oc*n] F32", nmse=5e-4),
    "CONV_2D_DW": Draw(f"{_2D} C=1..3 N=1..2", ("[KW, KH, 1, C] F32 cont", "[IW, IH, C, N] F32 cont"),
                       "[OW, OH, C, N] F32", nmse=5e-4),
    "CONV_TRANSPOSE_1D": Draw("K=1..4 OC=1..3 IC=1..3 L=1..6 s0=1..3", ("[K, OC, IC] F32|F16 cont", "[L, IC] F32 cont"),
                              "[(L-1)*s0+K, OC] F32"),
    "CONV_TRANSPOSE_2D": Draw(
        "KW=1..3 KH=1..3 OC=1..3 IC=1..3 W=1..5 H=1..4 N=1 stride=1..3",
        ("[KW, KH, OC, IC] F32|F16 cont", "[W, H, IC, N] F32 cont"),
        "[(W-1)*stride+KW, (H-1)*stride+KH, OC, N] F32",
        nmse=5e-4,
    ),
    "POOL_1D": Draw("k0=1..3 s0=1..2 p0=0..k0//2 A0=max(1,k0-2*p0)..k0+8 A1=1..4 A2=1..2 A3=1..2",
                    ("[A0, A1, A2, A3] F32|F16 cont",), "[(A0+2*p0-k0)//s0+1, A1, A2, A3] F32"),
    "POOL_2D": Draw(_POOL, ("[W, H, C, N] F32|F16 cont",), "[PW, PH, C, N] F32"),
    "POOL_2D_BACK": Draw(_POOL, ("[PW, PH, C, N] F32 cont", "[W, H, C, N] F32 cont"), "[W, H, C, N] F32"),
    "UPSCALE": Draw(
        "W=1..6 H=1..6 C=1..3 N=1..2 W2=1..9 H2=1..9 C2=1..4 N2=1..2 mode=0|1|2|256|257|258|513",
        ("[W, H, C, N] F32",),
        "[W2, H2, C2, N2] F32",
    ),
    "TIMESTEP_EMBEDDING": Draw("T=1..5 D2=1..8 dim=2*D2 max_period=10000|100", ("[T] F32 pos",), "[dim, T] F32",
                               nmse=5e-4),
    "WIN_PART": Draw("C=1..4 W=1..8 H=1..8 w=1..4 npx=(W+w-1)//w npy=(H+w-1)//w", ("[C, W, H, 1] F32 cont",),
                     "[C, w, w, npx*npy] F32"),
    "WIN_UNPART": Draw("C=1..4 W=1..8 H=1..8 w=1..4", ("[C, w, w, ((W+w-1)//w)*((H+w-1)//w)] F32 cont",),
                       "[C, W, H, 1] F32"),
    "GET_REL_POS": Draw("C=1..6 w=1..5", ("[C, 2*w-1] F16|BF16 cont",), "[C, w, w] F16", nmse=0.0),
    "ADD_REL_POS": Draw(
        "w=1..4 A=1..3 B=1..3 heads=1..2",
        ("[w*w, A*B, heads] F32 cont", "[w, A, B, heads] F32 cont", "[w, A, B, heads] F32 cont"),
        "[w*w, A*B, heads] F32",
        inplace="inplace",
    ),
}
