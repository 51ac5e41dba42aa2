"""The ggml op catalogue: for every op a GRAPH_COMPUTE node can carry, its sources and their
roles, its `op_params` layout, the types and result shape it accepts, and what it computes.

`rpc_tensor.op_params` is 16 int32 words whose meaning depends on the op (and, for UNARY
and GLU, on the sub-op named by word 0).  The layouts are declared here once, as data, and
read by every consumer: the reference executor's kernels (`spec.read(words)`), the graph
builder (`spec.pack(...)`), the hostile-input cases and fuzzers (each parameter's kind and
range), and the SPEC.md generator (§8.5).  Nothing else indexes op_params by number.

The families are one module each, as the executor's kernels are.  Which release first has
an op comes from the release enum tables (protocol/ggml_tables.json), not from this file.
"""

from __future__ import annotations

from dataclasses import replace

from ..ggml import GGML_RELEASES
from . import (attention, conv, copy, elementwise, layout, matmul, norm, recurrent, reduce, rope, rows, training,
               unary, views)
from .spec import WORDS, Draw, OpSpec, Param, Source, SubOp

FAMILIES = (views, copy, layout, elementwise, unary, reduce, norm, matmul, rows, attention, rope, conv, recurrent,
            training)


def _catalogue() -> dict[str, OpSpec]:
    """Every family's specs, each with its family's name and its Draw (a family's DRAWS, kept
    apart from the specs so that the prose reads on its own)."""
    found: dict[str, OpSpec] = {}
    for family in FAMILIES:
        draws = getattr(family, "DRAWS", {})
        assert set(draws) <= {spec.name for spec in family.SPECS}, f"{family.__name__}: a Draw of no op"
        for spec in family.SPECS:
            assert spec.name not in found, f"{spec.name} is declared twice"
            found[spec.name] = replace(spec, family=family.__name__.rpartition(".")[2], draw=draws.get(spec.name))
    return found


CATALOGUE: dict[str, OpSpec] = _catalogue()


def spec_for(op: str) -> OpSpec:
    found = CATALOGUE.get(op)
    if found is None:
        raise KeyError(f"op {op} is not in the op catalogue")
    return found


def since(op: str, sub: str | None = None) -> str | None:
    """The first release (of those with a protocol version) whose ggml has `op` (and sub-op
    `sub` of UNARY / GLU), or None if none has it."""
    for release, tables in GGML_RELEASES.items():
        if op not in tables.ops:
            continue
        if sub is None or sub in {"UNARY": tables.unary_ops, "GLU": tables.glu_ops}.get(op, ()):
            return release
    return None


__all__ = ["CATALOGUE", "Draw", "OpSpec", "Param", "Source", "SubOp", "WORDS", "since", "spec_for"]
