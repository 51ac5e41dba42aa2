"""FNV-1a 64, the hash that names tensor data in the hash cache (SPEC §9).

Weight tensors of a gigabyte are hashed when a client uploads hash-first, when a server
stores them in its cache and when it checks a cached file before answering a hit, so the
hash runs at C speed through the `fnv-c` package (about 1 GB/s here, without copying the
data).  `fnv1a64_reference` is the definition as a plain loop, kept as the oracle the fast
path is tested against.
"""

from __future__ import annotations

import fnv_c

FNV_OFFSET_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK = 2**64 - 1

try:  # fnv-c's cffi module takes any contiguous buffer; its public function takes bytes only
    from fnv_c.ext._fnv import ffi as _ffi, lib as _lib
except ImportError:  # pragma: no cover - a future fnv-c that moved it: copy into bytes
    _ffi = _lib = None


def fnv1a64(data) -> int:
    """FNV-1a 64 over `data` (any contiguous bytes-like object)."""
    view = memoryview(data).cast("B")
    if _lib is not None:
        return _lib.fnv1a_64(_ffi.from_buffer(view), len(view))
    return fnv_c.fnv1a_64(bytes(view))


def fnv1a64_reference(data, value: int = FNV_OFFSET_BASIS) -> int:
    """FNV-1a 64 by its definition (xor, then multiply, byte by byte), continuing from `value`.
    About 20 MB/s: for tests."""
    prime, mask = FNV_PRIME, _MASK
    for byte in memoryview(data).cast("B"):
        value = ((value ^ byte) * prime) & mask
    return value


def cache_name(value: int) -> str:
    """The cache file name of a hash: 16 lowercase hex digits."""
    return f"{value:016x}"
