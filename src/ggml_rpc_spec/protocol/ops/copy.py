"""Ops that move or convert data without arithmetic on it."""

from .spec import Draw, OpSpec, Param, Source

_WINDOW = (
    Param(0, "nb1", "i32", "byte stride of the window's dimension 1 inside the result", 0),
    Param(1, "nb2", "i32", "byte stride of the window's dimension 2", 0),
    Param(2, "nb3", "i32", "byte stride of the window's dimension 3", 0),
    Param(3, "offset", "i32", "byte offset of the window's first element", 0),
    Param(4, "inplace", "bool", "1: the result is a's memory: ggml does not copy a into it first", inert=True),
)

SPECS = (
    OpSpec(
        name="DUP",
        sources=(Source("a", "the values"),),
        params=(),
        types="any type to the same type; element types to element types; F32/F16/BF16 to a block type ggml's CPU "
        "writes; a block type to F32",
        result="as a",
        semantics="a copied (and converted to the result's type) in row-major element order; same type: the "
        "bytes of each element or block, never re-encoded",
    ),
    OpSpec(
        name="CONT",
        sources=(Source("a", "the values, any strides"),),
        params=(),
        types="any to the same type",
        result="as a (or any ne with as many elements)",
        semantics="a copied into contiguous memory, element (or block) order kept, bytes unchanged",
    ),
    OpSpec(
        name="CPY",
        sources=(Source("a", "the values"), Source("b", "the destination (the result is a view of b)", inert=True)),
        params=(),
        types="as DUP, the result's type being b's",
        result="as b",
        semantics="a converted to b's type and written over b, element i of a to element i of b in row-major order; "
        "same type: bytes copied, never re-encoded; into a block type: ggml's from_float per row.  ggml_cast "
        "makes a CPY whose b (src[1]) is the result itself, not a view of another tensor: such a node names "
        "itself, which is no cycle (§8.2 graph.self-reference), and it writes a converted into its own memory",
    ),
    OpSpec(
        name="ACC",
        sources=(Source("a", "the base values (contiguous)"), Source("b", "the values added into the window")),
        params=_WINDOW,
        types="F32 (a, b and result)",
        result="as a (contiguous)",
        semantics="result = a, then the window of the result (byte offset, byte strides element/nb1/nb2/nb3, b's shape) "
        "+= b; the window MUST lie inside the result",
    ),
    OpSpec(
        name="SET",
        sources=(Source("a", "the base values (contiguous)"), Source("b", "the values written into the window")),
        params=_WINDOW,
        types="F32 or I32 (a, b and result alike)",
        result="as a (contiguous)",
        semantics="result = a, then the window of the result (as ACC's) = b, bits unchanged; the window MUST lie inside "
        "the result",
    ),
)

_DIMS = "A0=1..9 A1=1..6 A2=1..3 A3=1..2"
_WINDOW_VARS = (
    "B0=1..A0 B1=1..A1 B2=1..A2 B3=1..A3 O0=0..A0-B0 O1=0..A1-B1 O2=0..A2-B2 O3=0..A3-B3 "
    "nb1=4*A0 nb2=4*A0*A1 nb3=4*A0*A1*A2 offset=4*(O0+A0*(O1+A1*(O2+A2*O3)))"
)

# How to draw a valid node of each op (differential fuzzing; see spec.Draw).
DRAWS = {
    "DUP": Draw(f"T=F32|F16|BF16|I32 {_DIMS}", ("[A0, A1, A2, A3] T",), "[A0, A1, A2, A3] T"),
    "CONT": Draw(f"T=F32|F16|BF16|I32 {_DIMS}", ("[A0, A1, A2, A3] T",), "[A0, A1, A2, A3] T"),
    "CPY": Draw(
        "S=F32|F16|BF16 T=F32|F16|BF16|Q8_0|Q4_0|Q4_1|Q5_0 Q=T[0]=='Q' R=1..2 A0=32*R A1=1..6 A2=1..3 A3=1..2",
        ("[A0, A1, A2, A3] S rows:Q", "[A0, A1, A2, A3] T cont"),
        "view 1",
    ),
    "ACC": Draw(f"{_DIMS} {_WINDOW_VARS}", ("[A0, A1, A2, A3] F32 cont", "[B0, B1, B2, B3] F32 rows"),
                "[A0, A1, A2, A3] F32", inplace="inplace"),
    "SET": Draw(f"T=F32|I32 {_DIMS} {_WINDOW_VARS}", ("[A0, A1, A2, A3] T cont", "[B0, B1, B2, B3] T rows"),
                "[A0, A1, A2, A3] T", inplace="inplace"),
}
