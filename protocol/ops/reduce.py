"""Reductions over rows or whole tensors."""

from . import OpSpec, Source

_A = (Source("a", "the values"),)

SPECS = (
    OpSpec("SUM", "reduce", _A, (), "F32, F16, BF16", "[1, 1, 1, 1]", "the sum of every element of a"),
    OpSpec("SUM_ROWS", "reduce", _A, (), "F32", "[1, a1, a2, a3]", "the sum of each row of a"),
    OpSpec("MEAN", "reduce", _A, (), "F32", "[1, a1, a2, a3]", "the mean of each row of a"),
    OpSpec("ARGMAX", "reduce", _A, (), "F32 in, I32 out", "[a1]", "per row of a matrix, the index of its largest value "
           "(the first on ties)"),
)
