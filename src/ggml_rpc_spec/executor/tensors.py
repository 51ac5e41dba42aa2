"""Graph tensors as NumPy views over buffer memory, honouring ggml's ne/nb exactly.

A ggml tensor is `data` plus four sizes `ne` and four byte strides `nb`; element
(i0, i1, i2, i3) lives at data + i0*nb0 + i1*nb1 + i2*nb2 + i3*nb3.  That is precisely a
strided NumPy array of shape (ne3, ne2, ne1, ne0) and strides (nb3, nb2, nb1, nb0) over the
buffer's bytes, so views, permutations and transposes cost nothing and writes land where
ggml would put them.  Quantized types are rows of blocks, read and written by quants.py
(decoded values cached for weights).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import numpy.typing as npt

from ggml_rpc_spec.protocol.ggml import ELEMENT_DTYPES, TensorType
from ggml_rpc_spec.protocol.ops import spec_for
from ggml_rpc_spec.protocol.tensor import decode_name

from .device import Buffer
from . import quants as block_types
from .errors import ExecutionError

QUANTIZABLE = frozenset(block_types.ENCODERS)  # the block types ggml's CPU writes (CPY / SET_ROWS targets)


@dataclass(eq=False, slots=True)
class TensorRef:
    """One tensor of a graph, bound to the memory it names."""

    kind: TensorType
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    data: int
    buffer: Buffer | None
    op: str
    op_params: np.ndarray  # int32[16]
    raw_name: bytes
    _view: np.ndarray | None = field(default=None, repr=False)
    srcs: list["TensorRef | None"] = field(default_factory=list)
    sub: str | None = None  # the UNARY / GLU sub-op, once a kernel has read it

    @property
    def label(self) -> str:
        """The op as messages name it: "ADD", "GLU(SWIGLU)"."""
        return f"{self.op}({self.sub})" if self.sub else self.op

    def params(self) -> SimpleNamespace:
        """The node's op_params by name, as the op catalogue lays them out (with those of its
        sub-op once known)."""
        return spec_for(self.op).read(self.op_params, self.sub)

    @property
    def name(self) -> str:
        """Decoded on demand: names appear only in messages."""
        return decode_name(self.raw_name)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """NumPy order: (ne3, ne2, ne1, ne0)."""
        return self.ne[3], self.ne[2], self.ne[1], self.ne[0]

    @property
    def n_elements(self) -> int:
        return self.ne[0] * self.ne[1] * self.ne[2] * self.ne[3]

    @property
    def quantized(self) -> bool:
        return self.kind.quantized

    @property
    def dtype(self) -> np.dtype:
        found = ELEMENT_DTYPES.get(self.kind.name)
        if found is None:
            raise ExecutionError(f"type {self.kind.name} has no element view")
        return found

    def src(self, index: int) -> "TensorRef":
        found = self.srcs[index] if index < len(self.srcs) else None
        if found is None:
            raise ExecutionError(f"{self.label} node {self.name!r} lacks src[{index}]")
        return found

    def live_buffer(self) -> Buffer:
        """The buffer the tensor's bytes lie in (ExecutionError when it has none here)."""
        if self.buffer is None:
            raise ExecutionError(f"{self.name!r} has no buffer on this server: no memory to read or write")
        return self.buffer

    def _offset(self) -> int:
        return self.data - self.live_buffer().base

    def view(self) -> np.ndarray:
        """The elements as a writable strided array of shape (ne3, ne2, ne1, ne0).

        Made once and kept: a plan lives no longer than the buffers it reaches (FREE_BUFFER
        discards stored graphs), so the buffer's memory object is stable for its life."""
        if self._view is None:
            self._view = strided_view(self.buffer.memory if self.buffer else None, self.dtype, self._offset(),
                                      self.shape, (self.nb[3], self.nb[2], self.nb[1], self.nb[0]))
        return self._view

    def part(self, offset: int, ne) -> "TensorRef":
        """The tensor of dimensions `ne` that starts `offset` bytes into this one, of the same
        type and strides: a tensor of its own (its own view and dequantization cache entry)."""
        return TensorRef(self.kind, tuple(ne), self.nb, self.data + offset, self.buffer, "NONE",
                         np.zeros(16, np.int32), b"")

    def row_bytes(self) -> np.ndarray:
        """Quantized rows as raw bytes, shape (ne3, ne2, ne1, bytes per row)."""
        per_row = self.ne[0] // self.kind.block_size * self.kind.type_size
        if self.nb[0] != self.kind.type_size:
            raise ExecutionError(f"{self.kind.name} tensor {self.name!r} has non-contiguous blocks (nb0={self.nb[0]})")
        return np.ndarray((self.ne[3], self.ne[2], self.ne[1], per_row), dtype=np.uint8,
                          buffer=self.live_buffer().memory, offset=self._offset(),
                          strides=(self.nb[3], self.nb[2], self.nb[1], 1))

    def blocks(self) -> np.ndarray:
        """The storage units (blocks of a quantized type, else elements) as opaque bytes, shape
        (ne3, ne2, ne1, ne0 / block size), strides nb: a same-type copy moves these and never
        converts.  The caller has checked that ne0 is a whole number of blocks."""
        return strided_view(self.buffer.memory if self.buffer else None, np.dtype(f"V{self.kind.type_size}"),
                            self._offset(), (self.ne[3], self.ne[2], self.ne[1], self.ne[0] // self.kind.block_size),
                            (self.nb[3], self.nb[2], self.nb[1], self.nb[0]))

    def window(self, offset: int, shape, strides) -> np.ndarray:
        """A writable strided view of elements of this tensor's type starting `offset` bytes into
        it (ACC / SET windows).  The caller has checked that the window stays inside the tensor."""
        return strided_view(self.buffer.memory if self.buffer else None, self.dtype, self._offset() + offset,
                            shape, strides)

    def read(self, cache: "DequantCache | None" = None) -> np.ndarray:
        """The values as float32, shape (ne3, ne2, ne1, ne0) (a view when already float32)."""
        if not self.quantized:
            values = self.view()
            return values if values.dtype == np.float32 else values.astype(np.float32)
        if cache is not None:
            return cache.get(self)
        return dequantize(self.kind, self.row_bytes())

    def write(self, values: npt.ArrayLike) -> None:
        """Store float (or integer) values (an array, or a scalar broadcast), converting to this
        tensor's type like ggml's from_float."""
        if self.quantized:
            self.row_bytes()[...] = quantize(self.kind, np.broadcast_to(values, self.shape))
            return
        target = self.view()
        if target.dtype.kind in "iu" and np.asarray(values).dtype.kind == "f":
            values = np.trunc(values)  # C's float -> int conversion truncates
        target[...] = values


def strided_view(memory, dtype: np.dtype, offset: int, shape, strides) -> np.ndarray:
    """The elements of a ggml tensor in `memory`: shape (ne3, ne2, ne1, ne0), strides
    (nb3, nb2, nb1, nb0), in bytes from `offset` (module docstring)."""
    return np.ndarray(shape, dtype=dtype, buffer=memory, offset=offset, strides=strides)


def quantize(kind: TensorType, values: np.ndarray) -> np.ndarray:
    """float rows -> the bytes of `kind` blocks, as ggml's CPU backend writes them (quants.py)."""
    if kind.name not in QUANTIZABLE:
        raise ExecutionError(f"cannot write {kind.name} tensors")
    return block_types.quantize(kind.name, kind.block_size, values)


def dequantize(kind: TensorType, rows: np.ndarray) -> np.ndarray:
    """Rows of `kind` blocks (..., bytes per row) -> float32 values (..., elements per row)."""
    try:
        return block_types.dequantize(kind.name, kind.block_size, kind.type_size, rows)
    except KeyError:
        raise ExecutionError(f"cannot read {kind.name} tensors (no dequantizer)") from None


class DequantCache:
    """Dequantized weights, keyed by where they live and the buffer's write counter, so a
    write to the buffer (which bumps it) retires the entry.  Least recently used entries
    go first once `budget` bytes are held."""

    def __init__(self, budget: int = 2 << 30) -> None:
        self.budget = budget
        self.held = 0
        self._entries: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tensor: TensorRef, derive=None) -> np.ndarray:
        """The dequantized values of `tensor`, or `derive(kind, raw rows)` of its blocks."""
        derive = derive or dequantize
        buffer = tensor.live_buffer()
        key = (buffer.handle, buffer.version, tensor.data, tensor.kind.value, tensor.ne, tensor.nb,
               derive.__name__)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        values = derive(tensor.kind, tensor.row_bytes())
        values.setflags(write=False)
        with self._lock:
            self._entries[key] = values
            self.held += values.nbytes
            while self.held > self.budget and len(self._entries) > 1:
                _, dropped = self._entries.popitem(last=False)
                self.held -= dropped.nbytes
        return values

