"""ggml's block types in NumPy: decoders for every type ggml's CPU backend reads, encoders for
every type it writes (the types with a `from_float` in ggml-cpu's type traits).

A block type stores `block_size` values in `type_size` bytes.  A decoder maps blocks, an
array (n, type_size) of uint8, to values (n, block_size) of float32; an encoder maps values
(n, block_size) to blocks.  Every function works on all blocks at once.

`gguf`'s decoders serve the types whose results equal ggml's; the types it lacks (Q1_0,
Q2_0) are decoded here from the block layouts of ggml-common.h.  The encoders follow ggml's
reference quantizers (ggml-quants.c) to the bit: same scale formula, same float32 operation
order, same rounding (C's roundf rounds half away from zero, casts truncate toward zero,
`nearest_int` rounds half to even).
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


def _nibbles_split(qs: np.ndarray) -> np.ndarray:
    """Bytes (n, k) whose low nibbles hold elements 0..k-1 and high nibbles k..2k-1 -> (n, 2k)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


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
