"""ggml facts the wire depends on: tensor types, per-release op enums, and `nbytes()`.

An rpc_tensor carries raw ggml enum values.  Type numbers are stable across releases (new
types are appended), but how many are valid is not; op numbers shift whenever ggml adds an
op.  Block and type sizes come from the `gguf` package (the official table); the op enums
come from each release's ggml.h via protocol/ggml_tables.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import ml_dtypes
import numpy as np
import numpy.typing as npt
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

TABLES = json.loads((Path(__file__).parent / "ggml_tables.json").read_text())["releases"]

# The types NumPy holds element by element, as little-endian dtypes (the wire's byte order).
ELEMENT_DTYPES = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16), "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"), "I64": np.dtype("<i8"),
}
TYPE_OF_DTYPE = {dtype: name for name, dtype in ELEMENT_DTYPES.items()}

MAX_DIMS = 4
MAX_SRC = 10
MAX_OP_PARAMS = 64  # bytes, i.e. 16 int32
MAX_NAME = 64

# Types that ggml still numbers but that `gguf` does not know yet (block size, type size).
_EXTRA_TYPES = {42: ("Q2_0", 64, 18)}
# Where `gguf`'s sizes are not ggml's: ggml's block_q8_1 holds d and s as F16 (2 + 2 + 32
# bytes; ggml-common.h asserts it), `gguf` counts them as F32 (40).
_GGML_SIZES = {"Q8_1": (32, 36)}


@dataclass(frozen=True)
class TensorType:
    """One ggml_type: elements per block and bytes per block (block size 0 = removed type)."""

    value: int
    name: str
    block_size: int
    type_size: int

    @property
    def removed(self) -> bool:
        return self.block_size == 0

    @property
    def quantized(self) -> bool:
        return self.block_size > 1


def _all_types() -> dict[int, TensorType]:
    types = {
        int(t): TensorType(int(t), t.name, *_GGML_SIZES.get(t.name, GGML_QUANT_SIZES[t]))
        for t in GGMLQuantizationType
        if t in GGML_QUANT_SIZES
    }
    for value, (name, block, size) in _EXTRA_TYPES.items():
        types.setdefault(value, TensorType(value, name, block, size))
    return types


TYPES: dict[int, TensorType] = _all_types()
TYPE_BY_NAME: dict[str, TensorType] = {t.name: t for t in TYPES.values()}


@dataclass(frozen=True)
class GgmlTables:
    """The ggml enums of one upstream release (the one a protocol version was cut from)."""

    release: str
    type_count: int
    ops: tuple[str, ...]
    unary_ops: tuple[str, ...]
    glu_ops: tuple[str, ...]
    tensor_flags: dict[str, int]

    def tensor_type(self, value: int) -> TensorType | None:
        """The type numbered `value` in this release, or None if it is invalid or removed."""
        if not 0 <= value < self.type_count:
            return None
        found = TYPES.get(value)
        return found if found is not None and not found.removed else None

    @cached_property
    def types(self) -> tuple[TensorType | None, ...]:
        """`tensor_type` of every type number, for lookups row by row."""
        return tuple(self.tensor_type(value) for value in range(self.type_count))

    @property
    def compute_flag(self) -> int:
        """The tensor flag that marks nodes to compute (0 when this ggml computes every node)."""
        return self.tensor_flags.get("COMPUTE", 0)

    def op_name(self, value: int) -> str | None:
        return self.ops[value] if 0 <= value < len(self.ops) else None

    def op_value(self, name: str) -> int:
        return self._op_numbers[name]

    @cached_property
    def _op_numbers(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.ops)}

    @cached_property
    def block_sizes(self) -> np.ndarray:
        """Block size per type number (0 for invalid/removed), for vectorised checks."""
        return self._per_type(lambda t: t.block_size)

    @cached_property
    def type_sizes(self) -> np.ndarray:
        return self._per_type(lambda t: t.type_size)

    def _per_type(self, attribute) -> np.ndarray:
        return np.array([attribute(t) if t is not None else 0 for t in self.types], dtype=np.uint64)


GGML_RELEASES: dict[str, GgmlTables] = {
    release: GgmlTables(
        release=release,
        type_count=table["type_count"],
        ops=tuple(table["ops"]),
        unary_ops=tuple(table["unary_ops"]),
        glu_ops=tuple(table["glu_ops"]),
        tensor_flags=dict(table["tensor_flags"]),
    )
    for release, table in TABLES.items()
}


def nbytes(tensor_type: TensorType, ne, nb) -> int:
    """Bytes spanned by a tensor, exactly as ggml_nbytes() computes it but without overflow.

    Any zero dimension makes the tensor empty.  For block size 1 the span is the element
    size plus the stride walk to the last element; for quantized types a row holds
    ne[0]/block_size blocks of nb[0] bytes.  Python integers never wrap, so a hostile
    ne/nb combination yields a huge number instead of ggml's wrapped small one.
    """
    if any(n == 0 for n in ne):
        return 0
    if tensor_type.block_size == 1:
        total = tensor_type.type_size
    else:
        total = ne[0] * nb[0] // tensor_type.block_size
    for i in range(1 if tensor_type.block_size != 1 else 0, MAX_DIMS):
        total += (ne[i] - 1) * nb[i]
    return total


INT64_MAX = 2**63 - 1


def elements_overflow(ne: npt.ArrayLike) -> np.ndarray:
    """Per tensor (rows of ne), whether ggml_new_tensor's element count check fails: starting
    from ne[0], each later dimension above 1 must satisfy INT64_MAX // ne[i] > count so far
    (dimensions of 0 and 1 are skipped, so an empty tensor can still fail)."""
    ne = np.atleast_2d(np.asarray(ne, dtype=np.uint64))
    count = ne[:, 0].copy()
    bad = np.zeros(len(ne), dtype=bool)
    for dim in range(1, MAX_DIMS):
        n = ne[:, dim]
        grows = n > 1
        bad |= grows & (np.uint64(INT64_MAX) // np.maximum(n, np.uint64(1)) <= count)
        count = count * np.where(grows & ~bad, n, np.uint64(1))  # rows already bad stop counting
    return bad


NBYTES_OVERFLOW = np.uint64(2**64 - 1)


def nbytes_array(tables: GgmlTables, types: np.ndarray, ne: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """Vectorised `nbytes` over arrays of tensors, exact, saturating at NBYTES_OVERFLOW.

    Every term is computed in uint64 without wrapping (a quantized row is split as
    q*nb0 + r*nb0//block so ne0*nb0 is never formed); a float64 estimate of the sum flags the
    totals that would not fit, which saturate instead of wrapping as ggml's size_t does.
    Callers must have rejected invalid types first.
    """
    ne, nb = (np.ascontiguousarray(column.T, dtype=np.uint64) for column in (ne, nb))  # one row per dimension
    block = tables.block_sizes[types]
    one = np.uint64(1)
    per_block = np.maximum(block, one)
    q, r = np.divmod(ne[0], per_block)
    total = np.where(block > one, q * nb[0] + r * nb[0] // per_block, tables.type_sizes[types] + (ne[0] - one) * nb[0])
    estimate = total.astype(np.float64)
    for dim in range(1, MAX_DIMS):  # (ne - 1 wraps where ne is 0: those totals are zeroed below)
        term = (ne[dim] - one) * nb[dim]
        total += term
        estimate += term
    total[estimate >= 2.0**63] = NBYTES_OVERFLOW
    total[ne.min(axis=0) == 0] = 0
    return total
