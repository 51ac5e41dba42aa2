"""Hypothesis strategies derived from the construct schemas themselves."""

from __future__ import annotations

import numpy as np
from construct import Array, Bytes, Container, FormatField, Renamed, Struct
from hypothesis import strategies as st

from ggml_rpc_spec.protocol import RPC_TENSOR_DTYPE, Graph

_RANGES = {"Q": (0, 2**64 - 1), "L": (0, 2**32 - 1), "l": (-(2**31), 2**31 - 1), "B": (0, 255)}


def for_schema(con) -> st.SearchStrategy:
    while isinstance(con, Renamed):
        con = con.subcon
    if isinstance(con, Struct):
        fields = {sub.name: for_schema(sub) for sub in con.subcons}
        return st.fixed_dictionaries(fields).map(lambda d: Container(**d))
    if isinstance(con, Array):
        return st.lists(for_schema(con.subcon), min_size=con.count, max_size=con.count)
    if isinstance(con, FormatField):
        low, high = _RANGES[con.fmtstr[-1]]
        return st.integers(low, high)
    if isinstance(con, Bytes):
        return st.binary(min_size=con.length, max_size=con.length)
    raise TypeError(type(con).__name__)


def graphs(profile, max_tensors: int = 6) -> st.SearchStrategy:
    """Graphs of random tensor bytes (any bit pattern is a valid encoding)."""
    itemsize = RPC_TENSOR_DTYPE[profile.tensor].itemsize

    @st.composite
    def build(draw):
        n_tensors = draw(st.integers(0, max_tensors))
        raw = draw(st.binary(min_size=n_tensors * itemsize, max_size=n_tensors * itemsize))
        nodes = draw(st.lists(st.integers(0, 2**64 - 1), max_size=8))
        return Graph(np.array(nodes, dtype="<u8"), np.frombuffer(raw, dtype=RPC_TENSOR_DTYPE[profile.tensor]).copy())

    return build()
