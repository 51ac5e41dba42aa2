"""ggml's CPU rounding of activations, for the optional "ggml" numerics mode.

Before a matrix product with quantized or F16 weights, ggml's CPU backend converts the
activations (src1) to the weight type's dot-product type: F16 for F16 weights, Q8_0 / Q8_1
blocks of 32 for the legacy quants, Q8_K blocks of 256 for K- and IQ-quants.  A float32
product of dequantized weights skips that rounding, which is why greedy text from two
correct backends can part at near-ties.  These functions apply the same rounding (the
dot product itself stays float32).
"""

from __future__ import annotations

from typing import Literal

import ml_dtypes
import numpy as np

Numerics = Literal["float", "ggml"]
NUMERICS: tuple[Numerics, ...] = ("ggml", "float")
DEFAULT_NUMERICS: Numerics = "ggml"  # closer to what the client's own CPU computes on real models (SPEC §8.4)


def _q8(values: np.ndarray, block: int = 32):
    """Q8_0 / Q8_1 blocks: (q, d as float32, d as stored in F16)."""
    shape = values.shape
    blocks = values.reshape(*shape[:-1], shape[-1] // block, block).astype(np.float32)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(amax > 0, np.float32(127) / amax, np.float32(0))
    return np.rint(blocks * inverse), d, d.astype(np.float16).astype(np.float32)  # SIMD rounding: half to even


def q8_blocks(values: np.ndarray) -> np.ndarray:
    """Q8_0 / Q8_1 values: per block of 32, d = amax/127 (stored as F16), q = round(x/d)."""
    q, _, d16 = _q8(values)
    return (q * d16).reshape(values.shape)


def q8_1_sum_correction(values: np.ndarray) -> np.ndarray:
    """Q8_1 also stores s = F16(d * sum(q)) per block, and ggml's Q4_1/Q5_1 dot products
    take the weights' min term from s rather than from the rounded values.  This is that
    difference, per block: s - d16 * sum(q); shape (..., K/32)."""
    q, d, d16 = _q8(values)
    total = q.sum(axis=-1, keepdims=True)
    s = (d * total).astype(np.float16).astype(np.float32)
    return (s - d16 * total)[..., 0]


def block_mins(kind, rows: np.ndarray) -> np.ndarray:
    """The per-block min m of Q4_1 / Q5_1 weights (the second F16 of every block)."""
    per_block = kind.type_size
    blocks = np.ascontiguousarray(rows).reshape(*rows.shape[:-1], rows.shape[-1] // per_block, per_block)
    return blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)


def q8_k_blocks(values: np.ndarray) -> np.ndarray:
    """Q8_K: per block of 256, iscale = -127/max (max = the value of largest magnitude),
    q = nearest(iscale*x) clamped to 127, d = 1/iscale in float32."""
    shape = values.shape
    blocks = values.reshape(*shape[:-1], shape[-1] // 256, 256).astype(np.float32)
    pick = np.abs(blocks).argmax(axis=-1)[..., None]
    peak = np.take_along_axis(blocks, pick, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(peak != 0, np.float32(-127) / peak, np.float32(0))
        q = np.minimum(np.rint(iscale * blocks), 127)
        d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0))
    return (q * d).reshape(shape)


def _f16(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).astype(np.float32)


def _bf16(values: np.ndarray) -> np.ndarray:
    return values.astype(ml_dtypes.bfloat16).astype(np.float32)


_LEGACY = ("Q1_0", "Q2_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "MXFP4", "NVFP4")  # vec_dot_type Q8_0 / Q8_1
_K = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
      "IQ4_XS", "TQ1_0", "TQ2_0")

WITH_MINS = ("Q4_1", "Q5_1")  # weight types whose dot product uses Q8_1's stored block sums
ROUNDING = {"F16": _f16, "BF16": _bf16, **{name: q8_blocks for name in _LEGACY}, **{name: q8_k_blocks for name in _K}}
