"""Derive NumPy structured dtypes from construct schemas, so both read the same bytes.

The construct Struct is the single source of truth for a layout.  Hot paths (arrays of
rpc_tensor in a graph) need vectorised decoding, so this module walks a Struct's fields and
builds the equivalent packed NumPy dtype; tests check that both produce identical bytes.
"""

from __future__ import annotations

import struct

import numpy as np
from construct import Array, Bytes, Construct, FormatField, Renamed, Struct


def numpy_dtype(schema: Construct) -> np.dtype:
    """The packed (align=False) NumPy dtype with the same byte layout as `schema`."""
    dtype = _dtype_of(schema)
    if dtype.itemsize != schema.sizeof():
        raise AssertionError(f"derived dtype is {dtype.itemsize} bytes, schema {schema.sizeof()}")
    return dtype


def _dtype_of(con: Construct) -> np.dtype:
    while isinstance(con, Renamed):
        con = con.subcon
    if isinstance(con, Struct):
        return np.dtype([(sub.name, _dtype_of(sub)) for sub in con.subcons])
    if isinstance(con, Array):
        return np.dtype((_dtype_of(con.subcon), (con.count,)))
    if isinstance(con, FormatField):
        return _scalar(con.fmtstr)
    if isinstance(con, Bytes):
        return np.dtype(f"V{con.length}")
    raise TypeError(f"no NumPy equivalent for {type(con).__name__}")


def _scalar(fmtstr: str) -> np.dtype:
    """A struct format such as "<L" as a NumPy scalar dtype.

    struct's standard sizes apply ("<L" is 4 bytes) while NumPy reads the same letters as
    native C types ("L" is 8 bytes on LP64), so translate through kind and size.
    """
    order, letter = fmtstr[0], fmtstr[-1]
    size = struct.calcsize(fmtstr)
    kind = "f" if letter in "efd" else "u" if letter in "BHILQ?" else "i"
    return np.dtype(f"{order}{kind}{size}")
