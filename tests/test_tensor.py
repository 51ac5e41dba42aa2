"""rpc_tensor: the construct schema and the derived NumPy dtype agree; ggml facts hold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import golden as G
from ggml_rpc_spec.protocol import RPC_TENSOR, RPC_TENSOR_DTYPE, RPC_TENSOR_SIZE, TYPES, decode_name, encode_name, nbytes
from ggml_rpc_spec.protocol.ggml import GGML_RELEASES, NBYTES_OVERFLOW, nbytes_array
from strategies import for_schema


def test_size_is_296_and_a_multiple_of_8():
    assert RPC_TENSOR_SIZE == 296
    for variant, schema in RPC_TENSOR.items():
        assert schema.sizeof() == RPC_TENSOR_DTYPE[variant].itemsize == 296


@pytest.mark.parametrize("variant", sorted(RPC_TENSOR))
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_construct_and_numpy_give_identical_bytes(variant, data):
    tensors = data.draw(st.lists(for_schema(RPC_TENSOR[variant]), min_size=1, max_size=4))
    raw = b"".join(RPC_TENSOR[variant].build(t) for t in tensors)
    array = np.frombuffer(raw, dtype=RPC_TENSOR_DTYPE[variant])
    assert array.tobytes() == raw
    for t, row in zip(tensors, array, strict=True):
        assert int(row["id"]) == t.id and int(row["data"]) == t.data
        assert row["ne"].tolist() == t.ne and row["op_params"].tolist() == t.op_params
        assert row["src"].tolist() == t.src and row["name"].tobytes() == t.name
    # and back: a structured array built field by field packs to the construct bytes
    rebuilt = np.zeros(len(tensors), dtype=RPC_TENSOR_DTYPE[variant])
    for i, t in enumerate(tensors):
        for name in RPC_TENSOR_DTYPE[variant].names:
            value = t[name]
            rebuilt[i][name] = np.frombuffer(value, dtype=np.uint8) if isinstance(value, bytes) else value
    assert rebuilt.tobytes() == raw


def test_golden_tensor_matches_schema():
    raw = G.tensor(id=9, type=30, buffer=3, ne=(5, 6, 7, 8), nb=(2, 10, 60, 420), op=48,
                   op_params=tuple(range(16)), flags=-1, src=tuple(range(1, 11)), view_src=11, view_offs=12,
                   data=13, name=b"rope", tail=G.use_count(3))
    tensor = RPC_TENSOR["use_count"].parse(raw)
    assert (tensor.type, tensor.flags, tensor.use_count, decode_name(tensor.name)) == (30, -1, 3, "rope")


def test_names():
    assert encode_name("x" * 100) == b"x" * 63 + b"\0"  # snprintf truncation keeps the NUL
    assert decode_name(b"ab\0garbage") == "ab"
    assert decode_name(b"\xff\0") == "\\xff"


def test_types_come_from_gguf():
    assert (TYPES[0].name, TYPES[0].block_size, TYPES[0].type_size) == ("F32", 1, 4)
    assert (TYPES[3].name, TYPES[3].block_size, TYPES[3].type_size) == ("Q4_1", 32, 20)
    assert (TYPES[12].name, TYPES[12].block_size, TYPES[12].type_size) == ("Q4_K", 256, 144)
    assert 4 not in TYPES and 5 not in TYPES


def test_sizes_are_ggml_s_where_gguf_differs():
    # block_q8_1: F16 d, F16 s, 32 int8 quants (ggml-common.h's static_assert); gguf says 40
    assert (TYPES[9].name, TYPES[9].block_size, TYPES[9].type_size) == ("Q8_1", 32, 2 + 2 + 32)
    assert nbytes(TYPES[9], [64, 2, 1, 1], [36, 72, 144, 144]) == 144


def test_valid_types_per_release():
    v36, v70 = GGML_RELEASES["3.6.1"], GGML_RELEASES["7.0.0"]
    assert v36.type_count == 41 and v70.type_count == 43
    assert v36.tensor_type(4) is None and v36.tensor_type(31) is None  # removed: block size 0
    assert v36.tensor_type(40).name == "NVFP4" and v36.tensor_type(41) is None
    assert v70.tensor_type(42).name == "Q2_0"


def test_op_tables():
    v70 = GGML_RELEASES["7.0.0"]
    assert [v70.op_value(n) for n in ("ADD", "MUL", "RMS_NORM", "MUL_MAT", "CONT", "RESHAPE", "VIEW", "PERMUTE",
                                      "GET_ROWS", "SET_ROWS", "SOFT_MAX", "ROPE", "GLU")] == \
        [2, 7, 25, 29, 35, 36, 37, 38, 40, 42, 46, 48, 100]
    assert len(v70.ops) == 101 and len(GGML_RELEASES["3.6.1"].ops) == 96
    assert v70.glu_ops.index("SWIGLU") == 2 and v70.unary_ops[:3] == ("ABS", "SGN", "NEG")


def test_nbytes_like_ggml():
    f32, q4_1 = TYPES[0], TYPES[3]
    assert nbytes(f32, [4, 3, 1, 1], [4, 16, 48, 48]) == 48
    assert nbytes(f32, [4, 3, 1, 1], [12, 4, 48, 48]) == 4 + 3 * 12 + 2 * 4  # transposed view
    assert nbytes(q4_1, [64, 2, 1, 1], [20, 40, 80, 80]) == 80
    assert nbytes(f32, [0, 3, 1, 1], [4, 0, 0, 0]) == 0
    assert nbytes(f32, [2**32 - 1] * 4, [2**32 - 1] * 4) > 2**64  # exact where ggml wraps


@settings(max_examples=200, deadline=None)
@given(type_value=st.sampled_from([0, 1, 2, 3, 8, 10, 12, 14, 24, 26, 27, 30]),
       ne=st.lists(st.integers(0, 2**32 - 1), min_size=4, max_size=4),
       nb=st.lists(st.integers(0, 2**32 - 1), min_size=4, max_size=4))
def test_vectorised_nbytes_is_exact_or_saturates(type_value, ne, nb):
    tables = GGML_RELEASES["7.0.0"]
    exact = nbytes(TYPES[type_value], ne, nb)
    got = nbytes_array(tables, np.array([type_value]), np.array([ne], dtype=np.uint32), np.array([nb], dtype=np.uint32))
    if exact < 2**63:
        assert int(got[0]) == exact
    else:
        assert got[0] == NBYTES_OVERFLOW or int(got[0]) == exact


def ggml_new_tensor_refuses(ne) -> bool:
    """ggml_new_tensor's element count check, statement by statement (int64 arithmetic)."""
    count = ne[0]
    for n in ne[1:]:
        if n > 1:
            if not (2**63 - 1) // n > count:
                return True
            count *= n
    return False


DIMENSION = st.one_of(st.sampled_from([0, 1, 2, 2**16, 2**31 - 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(DIMENSION, min_size=4, max_size=4), min_size=1, max_size=20))
def test_element_overflow_matches_ggml_new_tensor(shapes):
    from ggml_rpc_spec.protocol.ggml import elements_overflow

    assert elements_overflow(shapes).tolist() == [ggml_new_tensor_refuses(ne) for ne in shapes]


def test_element_overflow_edges():
    from ggml_rpc_spec.protocol.ggml import elements_overflow

    # an empty tensor (a zero dimension) still fails when the others multiply past INT64_MAX
    assert elements_overflow([[2**31, 0, 0, 2**32 - 1], [2**31 - 1, 1, 1, 2**32 - 1], [4, 4, 4, 4]]).tolist() == [
        True, False, False]
