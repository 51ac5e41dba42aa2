"""GRAPH_COMPUTE payloads: the NumPy fast path agrees with the construct schema."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import RPC_TENSOR_DTYPE, Graph, decode_graph, encode_graph, profile_for
from protocol.graph import graph_tail_schema
from conftest import V36, V70
from strategies import graphs


@settings(max_examples=40, deadline=None)
@given(profile=st.sampled_from([V36, V70, profile_for("2.0.0")]), data=st.data())
def test_fast_decode_agrees_with_construct(profile, data):
    graph = data.draw(graphs(profile))
    raw = b"".join(bytes(part) for part in encode_graph(profile, graph))
    parsed = graph_tail_schema(profile).parse(raw)
    decoded = decode_graph(profile, raw)
    assert decoded == graph
    assert decoded.nodes.tolist() == list(parsed.nodes)
    assert [int(t["id"]) for t in decoded.tensors] == [t.id for t in parsed.tensors]
    assert graph_tail_schema(profile).build(parsed) == raw


def test_decode_is_a_view_not_a_copy():
    tensors = np.zeros(1500, dtype=RPC_TENSOR_DTYPE["use_count"])
    tensors["id"] = np.arange(1, 1501)
    graph = Graph(np.arange(1, 1001, dtype="<u8"), tensors)
    raw = bytearray(b"".join(bytes(p) for p in encode_graph(V70, graph)))
    decoded = decode_graph(V70, raw)
    assert decoded.tensors.base is not None and decoded.n_tensors == 1500 and decoded.n_nodes == 1000
    raw[-296] ^= 0xFF  # the last tensor's first id byte, seen through the view
    assert int(decoded.tensors["id"][-1]) == 1500 ^ 0xFF
