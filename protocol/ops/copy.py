"""Ops that move or convert data without arithmetic on it."""

from . import OpSpec, Param, Source

_WINDOW = (
    Param(0, "nb1", "i32", "byte stride of the window's dimension 1 inside the result", 0),
    Param(1, "nb2", "i32", "byte stride of the window's dimension 2", 0),
    Param(2, "nb3", "i32", "byte stride of the window's dimension 3", 0),
    Param(3, "offset", "i32", "byte offset of the window's first element", 0),
    Param(4, "inplace", "bool", "1: the result is a's memory (informational; the addresses say it)"),
)

SPECS = (
    OpSpec("DUP", "copy", (Source("a", "the values"),), (), "any element type to any element or block type",
           "as a", "a copied (and converted to the result's type) in row-major element order"),
    OpSpec("CONT", "copy", (Source("a", "the values, any strides"),), (), "any to the same type",
           "as a (or any ne with as many elements)", "a copied into contiguous memory, element order kept"),
    OpSpec("CPY", "copy", (Source("a", "the values"), Source("b", "the destination (the result is a view of b)")),
           (), "any element or block type to any type the CPU can write", "as b",
           "a converted to b's type and written over b, element i of a to element i of b in row-major order"),
    OpSpec("ACC", "copy", (Source("a", "the base values"), Source("b", "the values added into the window")), _WINDOW,
           "F32 (a, b and result)", "as a", "result = a, then the strided window of the result += b"),
    OpSpec("SET", "copy", (Source("a", "the base values"), Source("b", "the values written into the window")), _WINDOW,
           "F32, I32 (a, b and result alike)", "as a", "result = a, then the strided window of the result = b"),
)
