"""Step keys: a node of a new graph takes over the step of a node of the previous graph
only when everything that decides the work is equal, whatever the ids."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import V70
from ggml_rpc_spec.protocol import RPC_TENSOR_DTYPE, Graph
from ggml_rpc_spec.executor.stepkeys import StepKeys, key_layout

DTYPE = RPC_TENSOR_DTYPE[V70.tensor]


def chain(ids=(11, 12, 13, 14)) -> Graph:
    """x, y (leaves) and two nodes: a = x + y, b = a * y; ids as given."""
    tensors = np.zeros(4, DTYPE)
    tensors["id"] = ids
    tensors["type"] = 0
    tensors["buffer"] = 0x5000
    tensors["ne"] = [8, 1, 1, 1]
    tensors["nb"] = [4, 32, 32, 32]
    tensors["data"] = [0x9000, 0x9020, 0x9040, 0x9060]
    tensors["op"][2:] = [V70.ggml.op_value("ADD"), V70.ggml.op_value("MUL")]
    tensors["src"][2, :2] = [ids[0], ids[1]]
    tensors["src"][3, :2] = [ids[2], ids[1]]
    for row, name in enumerate((b"x", b"y", b"a", b"b")):
        tensors[row]["name"] = name.ljust(64, b"\0")
    return Graph(np.array(ids[2:], "<u8"), tensors)


def keys(graph: Graph) -> StepKeys:
    return StepKeys(graph, graph.node_rows)


def test_the_key_words_of_the_rpc_tensor_layout():
    """Hand-computed from the record: type..flags are bytes 8-124, data and name 220-292;
    a source's type..nb bytes 8-52 and data 220-228; all fields are 4-byte words."""
    layout = key_layout(DTYPE)
    assert layout.word == np.dtype("<u4")
    assert layout.own == (slice(2, 31), slice(55, 73))
    assert layout.memory == (slice(2, 13), slice(55, 57))


def test_renumbered_and_reordered_tensors_keep_their_steps():
    before = chain()
    after = chain(ids=(21, 22, 23, 24))
    assert keys(after).find_in(keys(before)).tolist() == [0, 1]
    order = [3, 2, 0, 1]  # the same tensors, listed in another order
    shuffled = Graph(after.nodes, after.tensors[order].copy())
    assert keys(shuffled).find_in(keys(before)).tolist() == [0, 1]


@pytest.mark.parametrize("row, field, value", [
    (3, "type", 1), (3, "buffer", 0x6000), (3, "ne", [4, 2, 1, 1]), (3, "nb", [4, 16, 32, 32]),
    (3, "op", V70.ggml.op_value("SUB")), (3, "op_params", [1] + [0] * 15), (3, "flags", 1), (3, "data", 0x90A0),
    (3, "name", b"c".ljust(64, b"\0")),
], ids=lambda value: value if isinstance(value, str) else repr(value)[:20])
def test_a_change_to_a_nodes_own_fields_rebuilds_it(row, field, value):
    after = chain()
    after.tensors[row][field] = value
    assert keys(after).find_in(keys(chain())).tolist() == [0, -1]


@pytest.mark.parametrize("field, value", [
    ("type", 1), ("buffer", 0x6000), ("ne", [4, 2, 1, 1]), ("nb", [4, 16, 32, 32]), ("data", 0x90A0),
])
def test_a_change_to_a_sources_memory_rebuilds_its_consumers(field, value):
    after = chain()
    after.tensors[1][field] = value  # y: a source of both nodes
    assert keys(after).find_in(keys(chain())).tolist() == [-1, -1]


def test_a_source_change_that_is_not_memory_keeps_the_step():
    after = chain()
    after.tensors[1]["name"] = b"renamed".ljust(64, b"\0")  # a leaf's name and op do no work here
    after.tensors[1]["op"] = 5
    assert keys(after).find_in(keys(chain())).tolist() == [0, 1]


def test_source_slots_are_part_of_the_key():
    swapped = chain()
    swapped.tensors["src"][3, :2] = swapped.tensors["src"][3, 1::-1].copy()  # b = y * a
    assert keys(swapped).find_in(keys(chain())).tolist() == [0, -1]
    moved = chain()
    moved.tensors["src"][3, 1:3] = [0, moved.tensors["id"][1]]  # src1 unused, src2 = y
    assert keys(moved).find_in(keys(chain())).tolist() == [0, -1]


def test_graphs_using_more_source_slots_still_match_what_is_equal():
    wider = chain()
    wider.tensors["src"][2, 5] = wider.tensors["id"][1]  # a now also reads y in slot 5
    assert keys(wider).find_in(keys(chain())).tolist() == [-1, 1]
    assert keys(chain()).find_in(keys(wider)).tolist() == [-1, 1]


def test_a_hash_only_proposes_the_words_decide():
    before, after = keys(chain()), keys(chain())
    before.hashes = before.hashes[::-1].copy()  # each node now meets the other's hash
    assert after.find_in(before).tolist() == [-1, -1]


def test_empty_graphs_match_nothing():
    empty = Graph(np.zeros(0, "<u8"), np.zeros(0, DTYPE))
    assert keys(empty).find_in(keys(chain())).tolist() == []
    assert keys(chain()).find_in(keys(empty)).tolist() == [-1, -1]
