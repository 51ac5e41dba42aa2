"""ggml's block types in NumPy: decoders for every type ggml's CPU backend reads, encoders for
every type it writes (the types with a `from_float` in ggml-cpu's type traits).

A block type stores `block_size` values in `type_size` bytes.  A decoder maps blocks, an
array (n, type_size) of uint8, to values (n, block_size) of float32; an encoder maps values
(n, block_size) to blocks.  Every function works on all blocks at once.

`gguf`'s decoders serve the types whose results equal ggml's dequantize_row_* bit for bit;
the types it lacks (Q1_0, Q2_0) are decoded here from the block layouts of ggml-common.h.
The encoders give the bytes ggml's CPU backend writes (its `from_float`): ggml's reference
quantizers (quantize_row_*_ref in ggml-quants.c) with the same scale formulas, the same
float32 operation order and the same conversions (roundf rounds half away from zero, casts
truncate, `nearest_int` rounds half to even), except Q8_0, which ggml-cpu writes with its
SIMD routine on x86 and ARM (scale 127/amax, half to even; the reference quantizer is
REFERENCE_ENCODERS["Q8_0"]).  One known difference: an IQ4_NL block whose values are all
below 1e-15 in magnitude leaves its codes unset in ggml (stale stack memory); they are 0
here, and both read back as zeros.
"""

from __future__ import annotations

from functools import cache
from typing import Callable

import numpy as np
from gguf import quants as gguf_quants
from gguf.constants import GGMLQuantizationType

F32 = np.float32
Decoder = Callable[[np.ndarray], np.ndarray]
Encoder = Callable[[np.ndarray], np.ndarray]


# -- helpers ---------------------------------------------------------------------------------------


def _half(blocks: np.ndarray, start: int) -> np.ndarray:
    """The F16 at byte `start` of every block, as float32 of shape (n, 1)."""
    return np.ascontiguousarray(blocks[:, start:start + 2]).view(np.float16).astype(F32)


# -- decoders --------------------------------------------------------------------------------------


def _decode_q1_0(blocks: np.ndarray) -> np.ndarray:
    """block_q1_0: F16 d, then 128 sign bits (bit j of byte j//8 for element j, LSB first);
    a set bit is +d, a clear bit -d."""
    d = _half(blocks, 0)
    bits = np.unpackbits(blocks[:, 2:], axis=-1, bitorder="little")
    return np.where(bits.astype(bool), d, -d)


def _decode_q2_0(blocks: np.ndarray) -> np.ndarray:
    """block_q2_0: F16 d, then 64 two-bit codes (element j in bits 2*(j%4) of byte j//4);
    code q means (q - 1) * d, i.e. -d, 0, d, 2d."""
    d = _half(blocks, 0)
    codes = (blocks[:, 2:, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 0x03
    return (codes.reshape(len(blocks), -1).astype(F32) - F32(1)) * d


OWN_DECODERS: dict[str, Decoder] = {"Q1_0": _decode_q1_0, "Q2_0": _decode_q2_0}


@cache
def decoder(name: str) -> Decoder | None:
    """The block decoder of type `name`, or None if this server cannot read it."""
    found = OWN_DECODERS.get(name)
    if found is not None:
        return found
    try:
        qtype = GGMLQuantizationType[name]
    except KeyError:
        return None
    traits = gguf_quants._type_traits.get(qtype)
    if traits is None:
        return None

    traits.init_grid()  # the IQ types' lattice tables, built once

    def decode(blocks: np.ndarray) -> np.ndarray:
        return traits.dequantize_blocks(blocks).astype(F32, copy=False)

    return decode


def readable(name: str) -> bool:
    return decoder(name) is not None


def dequantize(name: str, block_size: int, type_size: int, rows: np.ndarray) -> np.ndarray:
    """Rows of blocks (..., bytes per row) -> values (..., elements per row) as float32."""
    decode = decoder(name)
    if decode is None:
        raise KeyError(name)
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    per_row = rows.shape[-1] // type_size * block_size
    if rows.size == 0:
        return np.zeros((*rows.shape[:-1], per_row), dtype=F32)
    blocks = rows.reshape(-1, type_size)
    return decode(blocks).reshape(*rows.shape[:-1], per_row)


# -- C arithmetic, element by element --------------------------------------------------------------
#
# ggml's quantizers are scalar C over float32 (libggml-base has no FMA and no reassociation),
# so every sum below is accumulated left to right in float32 and every conversion does what
# the C conversion does, NaN and out-of-range values included (a hostile tensor may hold any
# bits; the bytes written must still be ggml's).

_INT_MIN = np.int64(-(1 << 31))


def _f16_bits(x: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16: round to nearest even; NaN becomes the quiet NaN 0x7E00 with x's sign."""
    x = np.asarray(x, dtype=F32)
    bits = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        sign = (x.view(np.uint32) >> 16).astype(np.uint16) & np.uint16(0x8000)
        bits = np.where(nan, sign | np.uint16(0x7E00), bits)
    return bits


def _f16_round(x: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(x)): the float32 a stored F16 scale reads back as."""
    return _f16_bits(x).view(np.float16).astype(F32)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    """(n,) scales -> (n, 2) little-endian F16 bytes."""
    return _f16_bits(x).astype("<u2").view(np.uint8).reshape(-1, 2)


def _c_int(x: np.ndarray) -> np.ndarray:
    """C's float -> int32 conversion as x86 does it (truncation; NaN and out-of-range give
    INT_MIN), as int64 so later C integer arithmetic cannot wrap in NumPy."""
    x = np.asarray(x, dtype=F32)
    ok = np.abs(x) < F32(2147483648.0)  # False for NaN
    return np.where(ok, np.trunc(np.where(ok, x, 0)), _INT_MIN).astype(np.int64)


def _c_roundf(x: np.ndarray) -> np.ndarray:
    """roundf: to nearest, halfway cases away from zero (exact in float32: x - trunc(x) is exact)."""
    whole = np.trunc(x)
    return whole + np.where(np.abs(x - whole) >= F32(0.5), np.sign(x), F32(0)).astype(F32)


def _c_lroundf(x: np.ndarray) -> np.ndarray:
    """lroundf as int64: NaN and out-of-range give LONG_MIN."""
    x = np.asarray(x, dtype=F32)
    ok = np.abs(x) < F32(9.2e18)
    return np.where(ok, _c_roundf(np.where(ok, x, 0)), -(2 ** 63)).astype(np.int64)


def _nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: add 1.5 * 2**23 in float32 and read the low mantissa bits (round half
    to even for |x| < 2**22; the same bit trick for any other input), as int64."""
    shifted = (np.asarray(x, dtype=F32) + F32(12582912.0)).view(np.int32).astype(np.int64)
    return (shifted & 0x007FFFFF) - 0x00400000


def _seq_sum(terms: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """`float s = start (0); for i: s += terms[i]` along the FIRST axis, in float32 (the fitting
    code below keeps arrays element-major, (elements, blocks, ...), so each step adds one
    contiguous slab)."""
    terms = np.ascontiguousarray(terms, dtype=F32)
    total = np.zeros(terms.shape[1:], dtype=F32) if start is None else np.array(start, dtype=F32)
    for row in terms:
        total += row
    return total


def _first_abs_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`amax = 0; max = 0; for v: if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` per row of
    the last axis: (amax, max).  NaN never wins; the first of equal magnitudes does."""
    a = np.abs(x)
    key = np.where(np.isnan(a), F32(-1), a)
    pick = key.argmax(axis=-1)[..., None]
    won = np.take_along_axis(key, pick, axis=-1)[..., 0] > 0
    amax = np.where(won, np.take_along_axis(a, pick, axis=-1)[..., 0], F32(0)).astype(F32)
    value = np.where(won, np.take_along_axis(x, pick, axis=-1)[..., 0], F32(0)).astype(F32)
    return amax, value


def _max_from_zero(x: np.ndarray) -> np.ndarray:
    """`m = 0; for v: if (v > m) m = v;` (NaN skipped), along the last axis."""
    return np.max(np.where(x > 0, x, F32(0)), axis=-1).astype(F32)


def _c_max_scan(x: np.ndarray) -> np.ndarray:
    """`m = 0; for v: m = MAX(m, v)` with ggml's MAX(a, b) = a > b ? a : b: a NaN v replaces m,
    and a later larger v replaces the NaN.  Without NaN it is the plain maximum from 0."""
    if not np.isnan(x).any():
        return _max_from_zero(x)
    m = np.zeros(x.shape[:-1], dtype=F32)
    for i in range(x.shape[-1]):
        m = np.where(m > x[..., i], m, x[..., i])
    return m


def _scan(x: np.ndarray, better) -> np.ndarray:
    """`m = x[0]; for i >= 1: if (better(x[i], m)) m = x[i];` along the first axis."""
    m = x[0].copy()
    for row in x[1:]:
        m = np.where(better(row, m), row, m)
    return m


def _safe_inverse(d: np.ndarray) -> np.ndarray:
    """`d ? 1.0f/d : 0.0f` (NaN counts as true)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0)).astype(F32)


def _low_byte(v: np.ndarray) -> np.ndarray:
    """An int stored into a uint8_t: its low 8 bits."""
    return (np.asarray(v, dtype=np.int64) & 0xFF).astype(np.uint8)


def _as_int8(v: np.ndarray) -> np.ndarray:
    """An int converted to int8_t (then back to int): wrap to [-128, 127]."""
    return ((np.asarray(v, dtype=np.int64) + 128) & 0xFF) - 128


def _pack_nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """`lo | (hi << 4)` stored to uint8 (both int64 code arrays)."""
    return _low_byte(lo | (hi << 4))


def _pack_crumbs(codes: np.ndarray, group: int) -> np.ndarray:
    """2-bit codes (n, 4*group) -> bytes (n, group): byte l holds codes l, l+group, l+2*group,
    l+3*group in bits 0, 2, 4, 6."""
    c = codes.reshape(len(codes), 4, group)
    return _low_byte(c[:, 0] | (c[:, 1] << 2) | (c[:, 2] << 4) | (c[:, 3] << 6))


# -- legacy block types ----------------------------------------------------------------------------


def _encode_q1_0(x: np.ndarray) -> np.ndarray:
    """d = (sum of |x|, in order) / 128; bit j set when x_j >= 0."""
    d = _seq_sum(np.abs(x).T) / F32(128)
    bits = np.packbits(x >= 0, axis=-1, bitorder="little")
    return np.concatenate([_f16_bytes(d), bits], axis=-1)


def _encode_q2_0(x: np.ndarray) -> np.ndarray:
    """d = max |x|; code = clamp(round(x / d) + 1, 0, 3), four codes per byte from bit 0."""
    d = _max_from_zero(np.abs(x))
    inverse = np.where(d > 0, F32(1) / np.where(d > 0, d, F32(1)), F32(0)).astype(F32)
    codes = np.clip(_c_int(_c_roundf(x * inverse[:, None])) + 1, 0, 3)
    c = codes.reshape(len(x), -1, 4)
    qs = _low_byte(c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6))
    return np.concatenate([_f16_bytes(d), qs], axis=-1)


def _q_signed(x: np.ndarray, levels: int):
    """Q4_0 / Q5_0: d = max / -levels (max: the value of largest magnitude), codes
    (int8_t)(x/d + levels + 0.5) as ints."""
    _, peak = _first_abs_max(x)
    d = (peak / F32(-levels)).astype(F32)
    scaled = x * _safe_inverse(d)[:, None] + F32(levels + 0.5)
    return d, _as_int8(_c_int(scaled))


def _q_offset(x: np.ndarray, levels: int):
    """Q4_1 / Q5_1: min and max (`if (v < min) min = v` from FLT_MAX, and the mirror: NaN never
    wins, the first of equal values does), d = (max - min)/levels, codes (x - min)/d + 0.5
    converted to int."""
    big = np.finfo(F32).max

    def first(key_fill, pick, clamp):
        key = np.where(np.isnan(x), key_fill, x)
        at = pick(key, axis=-1)[:, None]
        found = np.take_along_axis(x, at, axis=-1)[:, 0]
        return clamp(found).astype(F32)

    lo = first(np.inf, np.argmin, lambda v: np.where(v < big, v, big))
    hi = first(-np.inf, np.argmax, lambda v: np.where(v > -big, v, -big))
    d = ((hi - lo) / F32(levels)).astype(F32)
    scaled = (x - lo[:, None]) * _safe_inverse(d)[:, None] + F32(0.5)
    return d, lo, _c_int(scaled)


def _five_bit(codes: np.ndarray):
    """5-bit codes (n, 32) -> (qh as 4 bytes: bit j = bit 4 of code j, qs nibbles j | j+16)."""
    qh = np.packbits(((codes >> 4) & 1).astype(np.uint8), axis=-1, bitorder="little")
    qs = _pack_nibbles(codes[:, :16] & 0x0F, codes[:, 16:] & 0x0F)
    return qh, qs


def _encode_q4_0(x: np.ndarray) -> np.ndarray:
    d, q = _q_signed(x, 8)
    q = np.minimum(15, q)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q[:, :16], q[:, 16:])], axis=-1)


def _encode_q4_1(x: np.ndarray) -> np.ndarray:
    d, lo, q = _q_offset(x, 15)
    q = np.minimum(15, _as_int8(q))
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q[:, :16], q[:, 16:])], axis=-1)


def _encode_q5_0(x: np.ndarray) -> np.ndarray:
    d, q = _q_signed(x, 16)
    qh, qs = _five_bit(_low_byte(np.minimum(31, q)).astype(np.int64))
    return np.concatenate([_f16_bytes(d), qh, qs], axis=-1)


def _encode_q5_1(x: np.ndarray) -> np.ndarray:
    d, lo, q = _q_offset(x, 31)
    qh, qs = _five_bit(_low_byte(q).astype(np.int64))  # (uint8_t) with no clamp, as in ggml
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), qh, qs], axis=-1)


def _encode_q8_0_ref(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_0_ref: d = amax/127, q = roundf(x * (1/d))."""
    d = (_c_max_scan(np.abs(x)) / F32(127)).astype(F32)
    q = _c_int(_c_roundf(x * _safe_inverse(d)[:, None]))
    return np.concatenate([_f16_bytes(d), _low_byte(q)], axis=-1)


def _simd_max_abs(x: np.ndarray) -> np.ndarray:
    """The AVX reduction of |x| over a block of 32: lane-wise max of the four 8-float vectors,
    then 8 -> 4 -> 2 -> 1 lanes, each step `a > b ? a : b` (what decides where a NaN goes)."""
    def vmax(a, b):
        return np.where(a > b, a, b)
    a = np.abs(x).reshape(len(x), 4, 8)
    m = vmax(vmax(vmax(a[:, 0], a[:, 1]), a[:, 2]), a[:, 3])
    m4 = vmax(m[:, 4:], m[:, :4])
    m2 = vmax(m4[:, :2], m4[:, 2:])
    return vmax(m2[:, 0], m2[:, 1]).astype(F32)


def _encode_q8_0(x: np.ndarray) -> np.ndarray:
    """ggml-cpu's from_float for Q8_0 on x86 (AVX/AVX2) and ARM (NEON), which differs from
    quantize_row_q8_0_ref: d = amax/127 but q = round_half_even(x * (127/amax)), saturated."""
    amax = _simd_max_abs(x)
    d = (amax / F32(127)).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(amax != 0, F32(127) / np.where(amax != 0, amax, F32(1)), F32(0)).astype(F32)
    q = _c_int(np.rint(x * scale[:, None]))
    return np.concatenate([_f16_bytes(d), _low_byte(np.clip(q, -128, 127))], axis=-1)


# -- FP4 types -------------------------------------------------------------------------------------

_FP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=F32)  # E2M1 values, doubled


def _fp4_codes(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """best_index_mxfp4: the first code whose value * d is nearest to x (code 0 for NaN)."""
    err = np.abs(_FP4 * d[..., None, None] - x[..., None])
    return err.argmin(axis=-1)


def _e8m0_half(e: np.ndarray) -> np.ndarray:
    """GGML_E8M0_TO_FP32_HALF: 2**(e - 128) (denormal for e < 2)."""
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(F32)


def _encode_mxfp4(x: np.ndarray) -> np.ndarray:
    """e = floor(log2(amax)) - 2 + 127 (E8M0), codes nearest to x / 2**(e - 128); low nibbles
    elements 0..15, high nibbles 16..31."""
    amax, _ = _first_abs_max(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        log = np.log2(amax.astype(np.float64)).astype(F32)  # log2f, correctly rounded
    e = np.where(amax > 0, _low_byte(_c_int(np.floor(log) - F32(2) + F32(127))), 0).astype(np.uint8)
    codes = _fp4_codes(x, _e8m0_half(e))
    return np.concatenate([e[:, None], _pack_nibbles(codes[:, :16], codes[:, 16:])], axis=-1)


def _ue4m3_value(code: np.ndarray) -> np.ndarray:
    """ggml_ue4m3_to_fp32: unsigned E4M3 (bias 7) times 0.5; codes 0 and 0x7F read as 0."""
    code = code.astype(np.int64)
    exp, man = (code >> 3) & 0xF, code & 0x7
    raw = np.where(exp == 0, np.ldexp(man.astype(F32), -9),
                   np.ldexp(F32(1) + man.astype(F32) / F32(8), (exp - 7).astype(np.int32))).astype(F32)
    return np.where((code == 0) | (code == 0x7F), F32(0), raw * F32(0.5)).astype(F32)


def _ue4m3_code(x: np.ndarray) -> np.ndarray:
    """ggml_fp32_to_ue4m3: non-positive and NaN -> 0; clamp to 448; subnormals rounded half up;
    normals round on the first dropped mantissa bit; past the top -> 0x7E."""
    x = np.asarray(x, dtype=F32)
    positive = x > 0
    x = np.where(positive, np.minimum(x, F32(448)), F32(1)).astype(F32)
    bits = x.view(np.uint32).astype(np.int64)
    exp = ((bits >> 23) & 0xFF) - 127 + 7
    man = ((bits >> 20) & 0x7) + ((bits >> 19) & 1)
    sub = np.minimum(_c_int(x * F32(512) + F32(0.5)), 7)
    sub = np.where(sub < 1, 0, sub)
    carry = man > 7
    exp = np.where(carry, exp + 1, exp)
    man = np.where(carry, 0, man)
    normal = np.where(exp >= 15, 0x7E, (exp << 3) | man)
    code = np.where(exp - carry <= 0, sub, normal)
    return np.where(positive, code, 0).astype(np.uint8)


def _encode_nvfp4(x: np.ndarray) -> np.ndarray:
    """Four sub-blocks of 16: UE4M3 scale code of amax/6, codes nearest to x / scale; sub-block s
    packs elements j (low nibble) and j+8 (high nibble) into byte 8*s + j."""
    sub = x.reshape(len(x), 4, 16)
    amax, _ = _first_abs_max(sub)
    scale_codes = _ue4m3_code(amax / F32(6))
    codes = _fp4_codes(sub, _ue4m3_value(scale_codes))
    qs = _pack_nibbles(codes[..., :8], codes[..., 8:]).reshape(len(x), 32)
    return np.concatenate([scale_codes, qs], axis=-1)


# -- ternary types ---------------------------------------------------------------------------------


def _ternary(x: np.ndarray):
    """d = max |x| (ggml's MAX scan), trits lroundf(x / d) + 1 as the int ggml adds."""
    d = _c_max_scan(np.abs(x))
    trits = _c_lroundf(x * _safe_inverse(d)[:, None]) + 1
    return d, (trits & 0xFFFFFFFF)  # the long + 1 stored in an int: only its low bits are used


def _encode_tq1_0(x: np.ndarray) -> np.ndarray:
    """Bytes of five trits (first element most significant), 32 bytes over elements 0..159 (byte m:
    m, m+32, ...), 16 bytes over 160..239, then 4 bytes of four trits over 240..255; each byte
    mapped to ceil(q * 256 / 243)."""
    d, t = _ternary(x)
    n = len(x)

    def trits_to_byte(groups):  # (n, bytes, trits) -> q built as uint8_t: q = q*3 + trit
        q = np.zeros(groups.shape[:-1], dtype=np.int64)
        for k in range(groups.shape[-1]):
            q = (q * 3 + groups[..., k]) & 0xFF
        return q

    first = trits_to_byte(t[:, :160].reshape(n, 5, 32).transpose(0, 2, 1))
    second = trits_to_byte(t[:, 160:240].reshape(n, 5, 16).transpose(0, 2, 1))
    last = (trits_to_byte(t[:, 240:].reshape(n, 4, 4).transpose(0, 2, 1)) * 3) & 0xFF
    q = np.concatenate([first, second, last], axis=-1)
    q = (q * 256 + 242) // 243
    return np.concatenate([_low_byte(q), _f16_bytes(d)], axis=-1)


def _encode_tq2_0(x: np.ndarray) -> np.ndarray:
    """2-bit trits + 1; each half of 128 elements packs elements l, l+32, l+64, l+96 into byte l."""
    d, t = _ternary(x)
    c = (t & 3).reshape(len(x), 2, 4, 32)
    qs = (c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)).reshape(len(x), 64)
    return np.concatenate([_low_byte(qs), _f16_bytes(d)], axis=-1)


# -- K-quants (super-blocks of 256) ----------------------------------------------------------------

_GROUP_MAX_EPS = F32(1e-15)


def _fit_min_scale(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                   use_mad: bool):
    """make_qkx2_quants for every row of x (m, n) with weights w: codes L in [0, nmax] and
    (scale, the_min) with x ~ scale * L - the_min.  Starts from the min/max grid, then tries
    nstep + 1 stretched grids, each solving least squares for scale and min, keeping a try
    only if its weighted error is smaller.  The tries run in order (each starts from the min
    the previous kept), with every sum accumulated element by element in float32."""
    x, w = np.ascontiguousarray(x.T), np.ascontiguousarray(w.T)  # element-major: (n, m)
    lo = _scan(x, np.less)
    hi = _scan(x, np.greater)
    sum_w = _seq_sum(w[1:], w[0])
    sum_x = _seq_sum((w * x)[1:], w[0] * x[0])
    lo = np.where(lo > 0, F32(0), lo).astype(F32)
    flat = hi == lo
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        span = np.where(flat, F32(1), hi - lo).astype(F32)
        iscale = (F32(nmax) / span).astype(F32)
        scale = (F32(1) / iscale).astype(F32)

        def error_of(s, m, codes):
            diff = (s * codes + m) - x
            diff = np.abs(diff) if use_mad else diff * diff
            return _seq_sum(w * diff)

        codes = np.clip(_nearest_int(iscale * (x - lo)), 0, nmax).astype(F32)
        best = error_of(scale, lo, codes)
        for step in range(nstep + 1):
            iscale = ((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (hi - lo)).astype(F32)
            trial = np.clip(_nearest_int(iscale * (x - lo)), 0, nmax).astype(F32)
            wl = w * trial
            sums = _seq_sum(np.stack([wl, wl * trial, wl * x], axis=1))
            sum_l, sum_l2, sum_xl = sums[0], sums[1], sums[2]
            det = sum_w * sum_l2 - sum_l * sum_l
            solvable = det > 0
            det = np.where(solvable, det, F32(1))
            this_scale = ((sum_w * sum_xl - sum_x * sum_l) / det).astype(F32)
            this_min = ((sum_l2 * sum_x - sum_l * sum_xl) / det).astype(F32)
            clipped = this_min > 0
            this_min = np.where(clipped, F32(0), this_min).astype(F32)
            this_scale = np.where(clipped, sum_xl / sum_l2, this_scale).astype(F32)
            error = error_of(this_scale, this_min, trial)
            take = solvable & (error < best) & ~flat
            codes = np.where(take, trial, codes)
            best = np.where(take, error, best)
            scale = np.where(take, this_scale, scale)
            lo = np.where(take, this_min, lo)
    codes = np.where(flat, F32(0), codes)
    scale = np.where(flat, F32(0), scale).astype(F32)
    return scale, (-lo).astype(F32), codes.T.astype(np.int64)


def _fit_signed_rmse(x: np.ndarray, nmax: int):
    """make_qx_quants with rmse_type 1 (weights x*x) for rows x (m, n): codes L + nmax with L in
    [-nmax, nmax-1] and the scale; the first grid -nmax/max, then 18 more (nmax +- 0.1*k), a
    try kept when it improves sumlx^2/suml2.  All-but-zero rows get scale 0, codes 0."""
    amax, peak = _first_abs_max(x)
    tiny = amax < _GROUP_MAX_EPS
    peak = np.where(tiny, F32(1), peak).astype(F32)
    x = np.ascontiguousarray(x.T)  # element-major: (n, m)
    w = x * x
    tries = [0] + [k for k in range(-9, 10) if k != 0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscales = np.stack([(F32(-nmax) / peak)] + [(-(F32(nmax) + F32(0.1) * F32(k)) / peak) for k in tries[1:]],
                           axis=1).astype(F32)  # (m, 19)
        levels = np.clip(_nearest_int(iscales * x[..., None]), -nmax, nmax - 1).astype(F32)  # (n, m, 19)
        wl = w[..., None] * levels
        sumlx = _seq_sum((w * x)[..., None] * levels)
        suml2 = _seq_sum(wl * levels)
        scale = np.where(suml2[:, 0] != 0, sumlx[:, 0] / np.where(suml2[:, 0] != 0, suml2[:, 0], F32(1)),
                         F32(0)).astype(F32)
        best = (scale * sumlx[:, 0]).astype(F32)
        chosen = levels[..., 0]
        for t in range(1, len(tries)):
            take = (suml2[:, t] > 0) & (sumlx[:, t] * sumlx[:, t] > best * suml2[:, t])
            new_scale = (sumlx[:, t] / np.where(take, suml2[:, t], F32(1))).astype(F32)
            chosen = np.where(take, levels[..., t], chosen)
            scale = np.where(take, new_scale, scale)
            best = np.where(take, new_scale * sumlx[:, t], best).astype(F32)
    codes = np.where(tiny[:, None], 0, chosen.T.astype(np.int64) + nmax)
    return np.where(tiny, F32(0), scale).astype(F32), codes


def _fit_q3(x: np.ndarray, nmax: int = 4):
    """make_q3_quants with do_rmse for rows x (m, n): start from round(-nmax/max * x) in
    [-nmax, nmax-1], then up to five passes of coordinate descent (weights x*x), each code
    replaced when that raises sumlx^2/suml2.  Returns (scale, codes + nmax); rows whose
    largest magnitude is below 1e-15 get scale 0 and codes 0."""
    amax, peak = _first_abs_max(x)
    tiny = amax < _GROUP_MAX_EPS
    peak = np.where(tiny, F32(1), peak).astype(F32)
    x = np.ascontiguousarray(x.T)  # element-major: (n, m)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = (F32(-nmax) / peak).astype(F32)
        levels = np.clip(_nearest_int(iscale * x), -nmax, nmax - 1)
        w = x * x
        wx = w * x
        lf = levels.astype(F32)
        sumlx = _seq_sum(wx * lf)
        suml2 = _seq_sum(w * lf * lf)
        for _ in range(5):  # a pass that changes nothing leaves everything as it was: no early exit needed
            for i in range(x.shape[0]):
                li = levels[i].astype(F32)
                slx = sumlx - wx[i] * li
                sl2 = suml2 - w[i] * li * li
                positive = slx > 0
                new = np.clip(_nearest_int(x[i] * sl2 / np.where(positive, slx, F32(1))), -nmax, nmax - 1)
                newf = new.astype(F32)
                slx = slx + wx[i] * newf
                sl2 = sl2 + w[i] * newf * newf
                take = positive & (new != levels[i]) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
                levels[i] = np.where(take, new, levels[i])
                sumlx = np.where(take, slx, sumlx).astype(F32)
                suml2 = np.where(take, sl2, suml2).astype(F32)
        scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1)), F32(0)).astype(F32)
    return np.where(tiny, F32(0), scale).astype(F32), np.where(tiny[:, None], 0, levels.T + nmax)


def _super_scales(values: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray]:
    """Largest of the sub-block values (from 0, NaN skipped) and the factor top/largest (0 if none)."""
    largest = _max_from_zero(values)
    with np.errstate(divide="ignore"):
        factor = np.where(largest > 0, F32(top) / np.where(largest > 0, largest, F32(1)), F32(0)).astype(F32)
    return largest, factor


def _requantize(x: np.ndarray, codes: np.ndarray, d: np.ndarray, dm: np.ndarray | None, low: int, high: int,
                offset: int) -> np.ndarray:
    """The final pass of the K-quants: where the sub-block scale d is non-zero, codes become
    clamp(nearest_int((x + dm) / d), low, high) + offset; elsewhere they stay."""
    live = d != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        shifted = x if dm is None else x + dm[..., None]
        fresh = np.clip(_nearest_int(shifted / np.where(live, d, F32(1))[..., None]), low, high) + offset
    return np.where(live[..., None], fresh, codes)


def _encode_q2_k(x: np.ndarray) -> np.ndarray:
    n = len(x)
    sub = x.reshape(n * 16, 16)
    scales, mins, codes = _fit_min_scale(sub, np.abs(sub), 3, -0.5, 0.1, 15, True)
    scales, mins, codes = scales.reshape(n, 16), mins.reshape(n, 16), codes.reshape(n, 16, 16)
    max_scale, iscale = _super_scales(scales, 15)
    max_min, imin = _super_scales(mins, 15)
    packed = np.where((max_scale > 0)[:, None], _nearest_int(iscale[:, None] * scales), 0)
    packed = np.where((max_min > 0)[:, None], packed | (_nearest_int(imin[:, None] * mins) << 4), packed) & 0xFF
    d = np.where(max_scale > 0, max_scale / F32(15), F32(0)).astype(F32)
    dmin = np.where(max_min > 0, max_min / F32(15), F32(0)).astype(F32)
    sub_d = (_f16_round(d)[:, None] * (packed & 0xF).astype(F32)).astype(F32)
    sub_m = (_f16_round(dmin)[:, None] * (packed >> 4).astype(F32)).astype(F32)
    codes = _requantize(x.reshape(n, 16, 16), codes, sub_d, sub_m, 0, 3, 0).reshape(n, 256)
    qs = _pack_crumbs(codes.reshape(n * 2, 128), 32).reshape(n, 64)
    return np.concatenate([_low_byte(packed), qs, _f16_bytes(d), _f16_bytes(dmin)], axis=-1)


def _encode_q3_k(x: np.ndarray) -> np.ndarray:
    n = len(x)
    scales, codes = _fit_q3(x.reshape(n * 16, 16))
    scales, codes = scales.reshape(n, 16), codes.reshape(n, 16, 16)
    _, max_scale = _first_abs_max(scales)
    live = max_scale != 0
    with np.errstate(divide="ignore"):
        iscale = (F32(-32) / np.where(live, max_scale, F32(1))).astype(F32)
    ls = np.clip(_as_int8(_nearest_int(iscale[:, None] * scales)), -32, 31) + 32  # (n, 16), 0..63
    ls = np.where(live[:, None], ls, 0)
    packed = np.zeros((n, 12), dtype=np.int64)
    packed[:, :8] = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    high = (ls >> 4).reshape(n, 4, 4)  # [j // 4, j % 4]
    packed[:, 8:] = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    d = np.where(live, F32(1) / iscale, F32(0)).astype(F32)
    sub_d = (_f16_round(d)[:, None] * (ls - 32).astype(F32)).astype(F32)
    sub_d = np.where(live[:, None], sub_d, F32(0))
    codes = _requantize(x.reshape(n, 16, 16), codes, sub_d, None, -4, 3, 4).reshape(n, 256)
    hmask = np.packbits((codes > 3).reshape(n, 8, 32).transpose(0, 2, 1).astype(np.uint8), axis=-1,
                        bitorder="little").reshape(n, 32)
    codes = np.where(codes > 3, codes - 4, codes)
    qs = _pack_crumbs(codes.reshape(n * 2, 128), 32).reshape(n, 64)
    return np.concatenate([hmask, qs, _low_byte(packed), _f16_bytes(d)], axis=-1)


def _k4_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins -> the 12 bytes of Q4_K / Q5_K."""
    packed = np.zeros((len(ls), 12), dtype=np.int64)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return _low_byte(packed)


def _k_min_scale(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Q4_K / Q5_K: per sub-block of 32, weights av_x + |x| (av_x = sqrt(mean x^2)), make_qkx2;
    then 6-bit scales and mins against the super-block's largest, and the final codes."""
    n = len(x)
    sub = x.reshape(n * 8, 32)
    av = np.sqrt(_seq_sum((sub * sub).T) / F32(32)).astype(F32)
    scales, mins, codes = _fit_min_scale(sub, av[:, None] + np.abs(sub), nmax, rmin, 0.1, nstep, False)
    scales, mins, codes = scales.reshape(n, 8), mins.reshape(n, 8), codes.reshape(n, 8, 32)
    max_scale, inv_scale = _super_scales(scales, 63)
    max_min, inv_min = _super_scales(mins, 63)
    ls = np.minimum(63, _low_byte(_nearest_int(inv_scale[:, None] * scales)).astype(np.int64))
    lm = np.minimum(63, _low_byte(_nearest_int(inv_min[:, None] * mins)).astype(np.int64))
    d = (max_scale / F32(63)).astype(F32)
    dmin = (max_min / F32(63)).astype(F32)
    sub_d = (_f16_round(d)[:, None] * ls.astype(F32)).astype(F32)
    sub_m = (_f16_round(dmin)[:, None] * lm.astype(F32)).astype(F32)
    codes = _requantize(x.reshape(n, 8, 32), codes, sub_d, sub_m, 0, nmax, 0).reshape(n, 256)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _k4_scales(ls, lm)], axis=-1), codes


def _encode_q4_k(x: np.ndarray) -> np.ndarray:
    head, codes = _k_min_scale(x, 15, -1.0, 20)
    c = codes.reshape(len(x), 4, 2, 32)
    return np.concatenate([head, _pack_nibbles(c[:, :, 0], c[:, :, 1]).reshape(len(x), 128)], axis=-1)


def _encode_q5_k(x: np.ndarray) -> np.ndarray:
    head, codes = _k_min_scale(x, 31, -0.5, 15)
    n = len(x)
    c = codes.reshape(n, 4, 2, 32)  # [pair of sub-blocks, which of the two, element]
    qs = _pack_nibbles(c[:, :, 0] & 0xF, c[:, :, 1] & 0xF).reshape(n, 128)
    high = (c >> 4) & 1  # bit 2*p of qh[j] for the first of pair p, bit 2*p+1 for the second
    qh = np.zeros((n, 32), dtype=np.int64)
    for p in range(4):
        qh |= (high[:, p, 0] << (2 * p)) | (high[:, p, 1] << (2 * p + 1))
    return np.concatenate([head, _low_byte(qh), qs], axis=-1)


def _encode_q6_k(x: np.ndarray) -> np.ndarray:
    n = len(x)
    scales, codes = _fit_signed_rmse(x.reshape(n * 16, 16), 32)
    scales, codes = scales.reshape(n, 16), codes.reshape(n, 16, 16)
    amax, max_scale = _first_abs_max(scales)
    dead = amax < _GROUP_MAX_EPS
    with np.errstate(divide="ignore"):
        iscale = (F32(-128) / np.where(dead, F32(1), max_scale)).astype(F32)
    d = np.where(dead, F32(0), F32(1) / iscale).astype(F32)
    ls = _as_int8(np.minimum(127, _nearest_int(iscale[:, None] * scales)))
    sub_d = (_f16_round(d)[:, None] * ls.astype(F32)).astype(F32)
    codes = _requantize(x.reshape(n, 16, 16), codes, sub_d, None, -32, 31, 32).reshape(n, 2, 4, 32)
    ql = np.concatenate([_pack_nibbles(codes[:, :, 0] & 0xF, codes[:, :, 2] & 0xF),
                         _pack_nibbles(codes[:, :, 1] & 0xF, codes[:, :, 3] & 0xF)], axis=-1).reshape(n, 128)
    top = codes >> 4
    qh = _low_byte(top[:, :, 0] | (top[:, :, 1] << 2) | (top[:, :, 2] << 4) | (top[:, :, 3] << 6)).reshape(n, 64)
    block = np.concatenate([ql, qh, _low_byte(ls), _f16_bytes(d)], axis=-1)
    return np.where(dead[:, None], np.uint8(0), block)


# -- IQ4 (non-linear 4-bit) ------------------------------------------------------------------------

_IQ4 = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=F32)


def _iq4_index(x: np.ndarray) -> np.ndarray:
    """best_index_int8 over the IQ4 grid: the nearest value's index, ties to the upper one, the
    ends for values beyond them (NaN gives the last)."""
    upper = np.clip(np.searchsorted(_IQ4, x, side="right"), 1, 15)
    pick = np.where(x - _IQ4[upper - 1] < _IQ4[upper] - x, upper - 1, upper)
    pick = np.where(x <= _IQ4[0], 0, pick)
    return np.where(x >= _IQ4[15], 15, pick)


def _iq4_fit(x: np.ndarray, ntry: int):
    """The per-block scale search of ggml's IQ4 quantizer for blocks x (m, 32) with weights
    x*x: codes for d = max/-127 (ntry > 0) or max/127, the least-squares d of those codes,
    then for each try t in [-ntry, ntry] the codes of id = (t - 127)/max, keeping the d of
    the best sumqx^2/sumq2.  Returns (d, codes of the first grid, live) per block."""
    amax, peak = _first_abs_max(x)
    live = ~(amax < _GROUP_MAX_EPS)
    peak = np.where(live, peak, F32(1)).astype(F32)
    x = np.ascontiguousarray(x.T)  # element-major: (n, m)
    w = x * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d0 = (-peak / _IQ4[0] if ntry > 0 else peak / _IQ4[0]).astype(F32)
        per_try = [(F32(1) / d0).astype(F32)] + [(F32(t + int(_IQ4[0])) / peak).astype(F32) for t in range(-ntry, ntry + 1)]
        ids = np.stack(per_try, axis=1)  # (m, tries)
        codes = _iq4_index(ids * x[..., None])  # (n, m, tries)
        q = _IQ4[codes]
        wq = w[..., None] * q
        sums = _seq_sum(np.stack([wq * x[..., None], wq * q], axis=1))  # (2, m, tries)
        sumqx, sumq2 = sums[0], sums[1]
        d = np.where(sumq2[:, 0] > 0, sumqx[:, 0] / np.where(sumq2[:, 0] > 0, sumq2[:, 0], F32(1)), F32(0)).astype(F32)
        best = (d * sumqx[:, 0]).astype(F32)
        for t in range(1, ids.shape[1]):
            take = (sumq2[:, t] > 0) & (sumqx[:, t] * sumqx[:, t] > best * sumq2[:, t])
            new_d = (sumqx[:, t] / np.where(take, sumq2[:, t], F32(1))).astype(F32)
            d = np.where(take, new_d, d)
            best = np.where(take, new_d * sumqx[:, t], best).astype(F32)
    return np.where(live, d, F32(0)).astype(F32), codes[..., 0].T, live


def _iq4_pack(codes: np.ndarray) -> np.ndarray:
    """Codes (n, k*32) -> bytes: per 32, byte j = code j | code j+16 << 4."""
    c = codes.reshape(len(codes), -1, 2, 16)
    return _pack_nibbles(c[:, :, 0], c[:, :, 1]).reshape(len(codes), -1)


def _encode_iq4_nl(x: np.ndarray) -> np.ndarray:
    """quantize_row_iq4_nl_ref (no scale search: ntry -1).  An all-zero block leaves its codes
    unset in ggml (any code reads as 0 under d = 0); they are 0 here."""
    d, codes, live = _iq4_fit(x, -1)
    codes = np.where(live[:, None], codes, 0)
    return np.concatenate([_f16_bytes(d), _iq4_pack(codes)], axis=-1)


def _encode_iq4_xs(x: np.ndarray) -> np.ndarray:
    """quantize_iq4_xs without weights: scale search (ntry 7) per block of 32, then 6-bit block
    scales against d = -max_scale/32 and codes re-chosen against each block's d * l."""
    n = len(x)
    blocks = x.reshape(n * 8, 32)
    scales, _, _ = _iq4_fit(blocks, 7)
    scales = scales.reshape(n, 8)
    _, max_scale = _first_abs_max(scales)
    d = (-max_scale / F32(32)).astype(F32)
    l = np.clip(_nearest_int(_safe_inverse(d)[:, None] * scales), -32, 31)
    dl = (d[:, None] * l.astype(F32)).astype(F32)
    codes = _iq4_index(_safe_inverse(dl)[..., None] * x.reshape(n, 8, 32)).reshape(n, 256)
    l = l + 32
    scales_l = _low_byte((l[:, 0::2] & 0xF) | ((l[:, 1::2] & 0xF) << 4))
    high = np.zeros(n, dtype=np.int64)
    for ib in range(8):
        high |= (l[:, ib] >> 4) << (2 * ib)
    scales_h = (high & 0xFFFF).astype("<u2").view(np.uint8).reshape(n, 2)
    return np.concatenate([_f16_bytes(d), scales_h, scales_l, _iq4_pack(codes)], axis=-1)


ENCODERS: dict[str, Encoder] = {
    "Q1_0": _encode_q1_0, "Q2_0": _encode_q2_0, "Q4_0": _encode_q4_0, "Q4_1": _encode_q4_1, "Q5_0": _encode_q5_0,
    "Q5_1": _encode_q5_1, "Q8_0": _encode_q8_0, "MXFP4": _encode_mxfp4, "NVFP4": _encode_nvfp4,
    "Q2_K": _encode_q2_k, "Q3_K": _encode_q3_k, "Q4_K": _encode_q4_k, "Q5_K": _encode_q5_k, "Q6_K": _encode_q6_k,
    "TQ1_0": _encode_tq1_0, "TQ2_0": _encode_tq2_0, "IQ4_NL": _encode_iq4_nl, "IQ4_XS": _encode_iq4_xs,
}
"""The block types ggml's CPU backend writes (a `from_float` in ggml-cpu's type traits), with
ggml's bytes: quantize_row_*_ref, except Q8_0, which ggml-cpu writes with its SIMD routine."""

REFERENCE_ENCODERS: dict[str, Encoder] = {**ENCODERS, "Q8_0": _encode_q8_0_ref}
"""The same with ggml's portable reference quantizers throughout (quantize_row_*_ref)."""


def writable(name: str) -> bool:
    return name in ENCODERS


def quantize(name: str, block_size: int, values: np.ndarray, reference: bool = False) -> np.ndarray:
    """Float rows (..., elements per row) -> rows of blocks (..., bytes per row)."""
    encode = (REFERENCE_ENCODERS if reference else ENCODERS)[name]
    values = np.ascontiguousarray(values, dtype=F32)
    per_row = values.shape[-1] // block_size
    blocks = values.reshape(-1, block_size)
    if len(blocks) == 0:
        return np.zeros((*values.shape[:-1], 0), dtype=np.uint8)
    with np.errstate(all="ignore"):
        out = encode(blocks)
    return out.reshape(*values.shape[:-1], per_row * out.shape[-1])
