"""Fast codecs derived from construct schemas, so both read and write the same bytes.

The construct Struct is the single source of truth for a layout.  Hot paths cannot afford
construct's per-field interpretation: arrays of rpc_tensor in a graph are decoded with the
equivalent packed NumPy dtype (`numpy_dtype`), and every fixed-size message head with one
`struct.Struct` call (`FlatCodec`).  Both are built by walking the Struct's fields; tests
check that they agree with construct byte for byte.
"""

from __future__ import annotations

import struct

import numpy as np
from construct import Array, Bytes, Construct, Container, FormatField, ListContainer, Renamed, Struct


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


class FlatCodec:
    """parse/build for a fixed-size Struct of integers, byte strings, arrays and nested
    Structs, as one `struct.Struct` over the flattened fields.

    `parse` returns the same Containers construct would.  `build` raises ValueError for any
    body construct would refuse (missing field, wrong array length, byte string of the
    wrong size, integer out of range), so callers can ask construct for the detailed error.
    """

    def __init__(self, schema: Construct) -> None:
        formats: list[str] = []
        self._layout = _flat_layout(schema, formats)
        self._struct = struct.Struct("<" + "".join(formats))
        if self._struct.size != schema.sizeof():
            raise AssertionError(f"flattened format is {self._struct.size} bytes, schema {schema.sizeof()}")
        self.size = self._struct.size

    def parse(self, raw) -> Container:
        values = self._struct.unpack(raw)
        return _rebuild(self._layout, values, 0)[0]

    def build(self, body) -> bytes:
        values: list = []
        try:
            _flatten(self._layout, body, values)
            return self._struct.pack(*values)
        except (KeyError, TypeError, AttributeError, struct.error) as exc:
            raise ValueError(str(exc)) from None


# A layout is a tuple of (name, kind, detail): kind "value" (one struct item), "bytes"
# (detail = length), "array" (detail = count), "struct" (detail = nested layout) or
# "structs" (detail = (count, nested layout)).


def _flat_layout(con: Construct, formats: list[str]) -> tuple:
    while isinstance(con, Renamed):
        con = con.subcon
    if not isinstance(con, Struct):
        raise TypeError(f"FlatCodec needs a Struct, not {type(con).__name__}")
    layout: list[tuple[str, str, object]] = []  # (field, kind, what the kind needs)
    for sub in con.subcons:
        inner = sub
        while isinstance(inner, Renamed):
            inner = inner.subcon
        if isinstance(inner, FormatField):
            formats.append(_letter(inner))
            layout.append((sub.name, "value", None))
        elif isinstance(inner, Bytes) and isinstance(inner.length, int):
            formats.append(f"{inner.length}s")
            layout.append((sub.name, "bytes", inner.length))
        elif isinstance(inner, Array) and isinstance(inner.count, int) and isinstance(inner.subcon, FormatField):
            formats.append(f"{inner.count}{_letter(inner.subcon)}")
            layout.append((sub.name, "array", inner.count))
        elif isinstance(inner, Struct):
            layout.append((sub.name, "struct", _flat_layout(inner, formats)))
        elif isinstance(inner, Array) and isinstance(inner.count, int):
            element_formats: list[str] = []
            element = _flat_layout(inner.subcon, element_formats)
            formats.extend(element_formats * inner.count)
            layout.append((sub.name, "structs", (inner.count, element)))
        else:
            raise TypeError(f"FlatCodec cannot flatten field {sub.name!r} ({type(inner).__name__})")
    return tuple(layout)


def _letter(field: FormatField) -> str:
    if field.fmtstr[0] != "<":
        raise TypeError(f"FlatCodec handles little-endian fields only, not {field.fmtstr!r}")
    return field.fmtstr[1:]


def _rebuild(layout: tuple, values: tuple, at: int) -> tuple[Container, int]:
    out = Container()
    for name, kind, detail in layout:
        if kind == "array":
            out[name] = ListContainer(values[at : at + detail])
            at += detail
        elif kind == "struct":
            out[name], at = _rebuild(detail, values, at)
        elif kind == "structs":
            count, element = detail
            items = ListContainer()
            for _ in range(count):
                item, at = _rebuild(element, values, at)
                items.append(item)
            out[name] = items
        else:
            out[name] = values[at]
            at += 1
    return out, at


def _flatten(layout: tuple, body, values: list) -> None:
    for name, kind, detail in layout:
        value = body[name]
        if kind == "value":
            values.append(value)
        elif kind == "bytes":
            if len(value) != detail:
                raise ValueError(f"{name}: {len(value)} bytes, expected {detail}")
            values.append(bytes(value))
        elif kind == "array":
            if len(value) != detail:
                raise ValueError(f"{name}: {len(value)} items, expected {detail}")
            values.extend(value)
        elif kind == "structs":
            count, element = detail
            if len(value) != count:
                raise ValueError(f"{name}: {len(value)} items, expected {count}")
            for item in value:
                _flatten(element, item, values)
        else:
            _flatten(detail, value, values)
