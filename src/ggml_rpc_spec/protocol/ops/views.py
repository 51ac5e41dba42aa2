"""Ops that compute nothing: a node that names memory (a leaf, a view, a new shape or order)."""

from .spec import OpSpec, Param, Source

_SRC = (Source("a", "the tensor viewed"),)

SPECS = (
    OpSpec(
        name="NONE",
        sources=(),
        params=(),
        types="any",
        result="as declared",
        semantics="a leaf: memory the client fills (inputs, weights, caches)",
        computes=False,
    ),
    OpSpec(
        name="RESHAPE",
        sources=_SRC,
        params=(),
        types="any (as a)",
        result="any ne with as many elements as a",
        semantics="a's contiguous memory read with another shape",
        computes=False,
    ),
    OpSpec(
        name="VIEW",
        sources=_SRC,
        params=(
            Param(0, "offset_lo", "u32", "low 32 bits of the byte offset into a"),
            Param(1, "offset_hi", "u32", "high 32 bits of the byte offset into a"),
        ),
        types="any (as a)",
        result="as declared, with its own nb",
        semantics="a window of a's memory at a byte offset",
        computes=False,
    ),
    OpSpec(
        name="PERMUTE",
        sources=_SRC,
        params=tuple(
            Param(i, f"axis{i}", "i32", f"the dimension that a's dimension {i} becomes", 0, 3) for i in range(4)
        ),
        types="any (as a)",
        result="a's ne and nb reordered",
        semantics="a's dimensions reordered (no data moves)",
        computes=False,
    ),
    OpSpec(
        name="TRANSPOSE",
        sources=_SRC,
        params=(),
        types="any (as a)",
        result="[a1, a0, a2, a3]",
        semantics="dimensions 0 and 1 swapped (no data moves)",
        computes=False,
    ),
)
