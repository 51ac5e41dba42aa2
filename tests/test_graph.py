"""GRAPH_COMPUTE payloads: the NumPy fast path agrees with the construct schema."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ggml_rpc_spec.protocol import RPC_TENSOR_DTYPE, Graph, decode_graph, encode_graph, profile_for
from ggml_rpc_spec.protocol.graph import graph_tail_schema, id_rows
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


def test_id_rows_finds_linked_ids_and_marks_empty_and_absent_slots():
    """Hand-made: rows of ids among unsorted tensor ids; 0 (no tensor) and unknown ids -> -1."""
    ids = np.array([50, 30, 90], dtype="<u8")
    wanted = np.array([[30, 0, 70], [90, 50, 0]], dtype="<u8")
    assert id_rows(ids, wanted).tolist() == [[1, -1, -1], [2, 0, -1]]
    assert id_rows(ids[:0], wanted).tolist() == [[-1, -1, -1], [-1, -1, -1]]
    assert id_rows(ids, np.zeros(3, dtype="<u8")).tolist() == [-1, -1, -1]


def test_a_graph_finds_the_rows_of_its_nodes_and_links():
    """Hand-made: node ids and src[] / view_src links resolved to tensor rows (-1: none)."""
    tensors = np.zeros(3, dtype=RPC_TENSOR_DTYPE["padding"])
    tensors["id"] = [7, 5, 9]
    tensors["src"][2, :2] = [7, 5]
    tensors["view_src"][1] = 7
    graph = Graph(np.array([9, 5], dtype="<u8"), tensors)
    assert graph.node_rows.tolist() == [2, 1]
    assert graph.link_rows[:, :2].tolist() == [[-1, -1], [-1, -1], [0, 1]]
    assert graph.link_rows[:, -1].tolist() == [-1, 0, -1]
