"""Ops that compute nothing: a node that names memory (a leaf, a view, a new shape or order)."""

from .spec import OpSpec, Param, Source

_SRC = (Source("a", "the tensor viewed"),)

SPECS = (
    OpSpec("NONE", "views", (), (), "any", "as declared", "a leaf: memory the client fills (inputs, weights, caches)",
           computes=False),
    OpSpec("RESHAPE", "views", _SRC, (), "any (as a)", "any ne with as many elements as a",
           "a's contiguous memory read with another shape", computes=False),
    OpSpec("VIEW", "views", _SRC,
           (Param(0, "offset_lo", "u32", "low 32 bits of the byte offset into a"),
            Param(1, "offset_hi", "u32", "high 32 bits of the byte offset into a")),
           "any (as a)", "as declared, with its own nb", "a window of a's memory at a byte offset", computes=False),
    OpSpec("PERMUTE", "views", _SRC,
           tuple(Param(i, f"axis{i}", "i32", f"the dimension that a's dimension {i} becomes", 0, 3) for i in range(4)),
           "any (as a)", "a's ne and nb reordered", "a's dimensions reordered (no data moves)", computes=False),
    OpSpec("TRANSPOSE", "views", _SRC, (), "any (as a)", "[a1, a0, a2, a3]", "dimensions 0 and 1 swapped (no data moves)",
           computes=False),
)
