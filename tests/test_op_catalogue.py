"""The op catalogue (protocol/ops) covers every op of every release, agrees with the
executor's registry, and packs op_params exactly as ggml's constructors lay them out."""

from __future__ import annotations

import struct

import pytest

from ggml_rpc_spec.protocol.ggml import GGML_RELEASES
from ggml_rpc_spec.protocol.ops import CATALOGUE, WORDS, spec_for
from ggml_rpc_spec.protocol.rules import CUSTOM_OPS
from ggml_rpc_spec.executor.ops import KERNELS

ALL_OPS = sorted({op for tables in GGML_RELEASES.values() for op in tables.ops})


@pytest.mark.parametrize("op", ALL_OPS)
def test_every_op_of_every_release_is_specified_or_refused_by_rule(op):
    assert op in CATALOGUE or op in CUSTOM_OPS, f"{op} is neither in the op catalogue nor a refused custom op"
    assert not (op in CATALOGUE and op in CUSTOM_OPS)


def test_catalogue_and_kernel_registry_name_the_same_ops():
    assert set(CATALOGUE) == set(KERNELS)


@pytest.mark.parametrize("field,op", [("unary_ops", "UNARY"), ("glu_ops", "GLU")])
def test_every_sub_op_of_every_release_is_specified(field, op):
    names = {name for tables in GGML_RELEASES.values() for name in getattr(tables, field)}
    assert names == {sub.name for sub in spec_for(op).sub_ops}


def _words(*values: tuple[str, object]) -> list[int]:
    """op_params words packed by hand: ("i", 3) or ("f", 1.5), then zeros."""
    raw = b"".join(struct.pack("<" + kind, value) for kind, value in values)
    return list(struct.unpack(f"<{WORDS}i", raw + bytes(4 * WORDS - len(raw))))


def test_rope_params_pack_as_ggml_rope_ext_lays_them_out():
    # ggml_rope_impl: {n_past=0, n_dims, mode, n_ctx=0, n_ctx_orig, freq_base, freq_scale, ext_factor,
    #                  attn_factor, beta_fast, beta_slow, sections[4]}
    expected = _words(("i", 0), ("i", 64), ("i", 2), ("i", 0), ("i", 4096), ("f", 10000.0), ("f", 0.5),
                      ("f", 1.0), ("f", 1.0), ("f", 32.0), ("f", 1.0))
    packed = spec_for("ROPE").pack(n_dims=64, mode="NEOX", n_ctx_orig=4096, freq_base=10000.0, freq_scale=0.5,
                                   ext_factor=1.0, attn_factor=1.0, beta_fast=32.0, beta_slow=1.0)
    assert packed == expected


def test_glu_sub_op_params_extend_the_op_layout():
    # ggml_swiglu_oai: {op, swapped, alpha (f32), limit (f32)}
    expected = _words(("i", 3), ("i", 1), ("f", 1.702), ("f", 7.0))
    assert spec_for("GLU").pack("SWIGLU_OAI", op=3, swapped=True, alpha=1.702, limit=7.0) == expected
    read = spec_for("GLU").read(expected, "SWIGLU_OAI")
    assert (read.op, read.swapped, read.limit) == (3, True, 7.0)
    assert read.alpha == struct.unpack("<f", struct.pack("<f", 1.702))[0]


def test_a_name_outside_the_layout_is_refused():
    with pytest.raises(KeyError, match="no params"):
        spec_for("SCALE").pack(scale=2.0)  # the words are `s` and `b`
