"""Ops that build a tensor from others by position: repeat, concatenate, pad, roll, fill,
ranges, diagonals and triangles."""

from .spec import Draw, OpSpec, Param, Source

_A = (Source("a", "the values"),)
_PADS = tuple(
    Param(2 * d + side, f"{name}{d}", "i32", f"elements added {where} dimension {d} (negative: removed)")
    for d in range(4)
    for side, name, where in ((0, "lp", "before"), (1, "rp", "after"))
)

SPECS = (
    OpSpec(
        name="REPEAT",
        sources=_A,
        params=(),
        types="F32, F16, BF16, I32, I16 (a and result alike)",
        result="any shape each of whose dims is a multiple of a's",
        semantics="a tiled to fill the result",
    ),
    OpSpec(
        name="REPEAT_BACK",
        sources=_A,
        params=(),
        types="F32",
        result="any shape each of whose dims divides a's",
        semantics="the sum of the tiles of a (the gradient of REPEAT), added tile after tile in float",
    ),
    OpSpec(
        name="CONCAT",
        sources=(Source("a", "the first part"), Source("b", "the second part")),
        params=(Param(0, "dim", "i32", "the dimension along which b follows a", 0, 3),),
        types="any (a, b and result alike; quantized types by whole rows of blocks)",
        result="a's shape with dimension dim a[dim] + b[dim]",
        semantics="a followed by b along dimension dim",
    ),
    OpSpec(
        name="PAD",
        sources=_A,
        params=_PADS + (Param(8, "circular", "bool", "padding wraps around (torus) instead of zeros"),),
        types="F32",
        result="[a0 + lp0 + rp0, a1 + lp1 + rp1, a2 + lp2 + rp2, a3 + lp3 + rp3]",
        semantics="a placed at (lp0, lp1, lp2, lp3), zeros around it, or a's values wrapped around when circular "
        "(each lp at most a's extent there)",
    ),
    OpSpec(
        name="PAD_REFLECT_1D",
        sources=_A,
        params=(
            Param(0, "p0", "i32", "elements mirrored before each row (< a0)", 0),
            Param(1, "p1", "i32", "elements mirrored after each row (< a0)", 0),
        ),
        types="F32",
        result="[a0 + p0 + p1, a1, a2, a3]",
        semantics="each row of a with its first p0 and last p1 elements mirrored outwards, edges not repeated",
    ),
    OpSpec(
        name="ROLL",
        sources=_A,
        params=tuple(
            Param(i, f"shift{i}", "i32", f"places dimension {i} moves forward (|shift| < a{i})") for i in range(4)
        ),
        types="F32",
        result="as a",
        semantics="a rotated: result[i] = a[(i - shift) mod a.ne] in every dimension",
    ),
    OpSpec(
        name="FILL",
        sources=(Source("a", "the tensor filled (its values are not read)", inert=True),),
        params=(Param(0, "c", "f32", "the value"),),
        types="F32, F16 (0.3.20: F32)",
        result="as a",
        semantics="every element set to c (a's values are not read)",
    ),
    OpSpec(
        name="ARANGE",
        sources=(),
        params=(
            Param(0, "start", "f32", "first value"),
            Param(1, "stop", "f32", "end (excluded)"),
            Param(2, "step", "f32", "increment"),
        ),
        types="F32",
        result="[ceil((stop - start) / step)] (in float)",
        semantics="result[i] = start + step * i, in float",
    ),
    OpSpec(
        name="DIAG",
        sources=(Source("a", "the diagonals [n, 1, a2, a3]"),),
        params=(),
        types="F32",
        result="[n, n, a2, a3]",
        semantics="each row of a as the diagonal of an n x n matrix of zeros",
    ),
    OpSpec(
        name="TRI",
        sources=_A,
        params=(Param(0, "type", "enum:UPPER_DIAG=0,UPPER=1,LOWER_DIAG=2,LOWER=3", "the part kept"),),
        types="F32",
        result="as a",
        semantics="a's element (i0, i1) kept where i0 >= i1 (UPPER_DIAG), i0 > i1, i0 <= i1, i0 < i1 (LOWER), else 0",
    ),
)

_DIMS = "A0=1..9 A1=1..6 A2=1..3 A3=1..2"
_PAD_VARS = " ".join(f"lp{d}=0..min(2,A{d}) rp{d}=0..min(2,A{d})" for d in range(4))

# How to draw a valid node of each op (differential fuzzing; see spec.Draw).
DRAWS = {
    "REPEAT": Draw(f"T=F32|F16|BF16|I32|I16 {_DIMS} R0=1..3 R1=1..3 R2=1..2 R3=1..2", ("[A0, A1, A2, A3] T rows",),
                   "[A0*R0, A1*R1, A2*R2, A3*R3] T"),
    "REPEAT_BACK": Draw(f"{_DIMS} R0=1..3 R1=1..3 R2=1..2 R3=1..2", ("[A0*R0, A1*R1, A2*R2, A3*R3] F32 rows",),
                        "[A0, A1, A2, A3] F32"),
    "CONCAT": Draw(
        f"T=F32|F16|I32 {_DIMS} B=1..4",
        ("[A0, A1, A2, A3] T",
         "[B if dim==0 else A0, B if dim==1 else A1, B if dim==2 else A2, B if dim==3 else A3] T"),
        "[A0+B*(dim==0), A1+B*(dim==1), A2+B*(dim==2), A3+B*(dim==3)] T",
    ),
    "PAD": Draw(f"{_DIMS} {_PAD_VARS}", ("[A0, A1, A2, A3] F32",),
                "[A0+lp0+rp0, A1+lp1+rp1, A2+lp2+rp2, A3+lp3+rp3] F32"),
    "PAD_REFLECT_1D": Draw(f"{_DIMS} p0=0..A0-1 p1=0..A0-1", ("[A0, A1, A2, A3] F32 rows",),
                           "[A0+p0+p1, A1, A2, A3] F32"),
    "ROLL": Draw(f"{_DIMS} " + " ".join(f"shift{d}=1-A{d}..A{d}-1" for d in range(4)),
                 ("[A0, A1, A2, A3] F32 rows",), "[A0, A1, A2, A3] F32"),
    "FILL": Draw(_DIMS, ("[A0, A1, A2, A3] F32",), "[A0, A1, A2, A3] F32"),
    "ARANGE": Draw("start=-2|0|1.5 step=0.5|1|3 N=1..9 stop=start+step*(N-0.5)", (), "[N] F32"),
    "DIAG": Draw("N=1..8 A2=1..3 A3=1..2", ("[N, 1, A2, A3] F32 rows",), "[N, N, A2, A3] F32"),
    "TRI": Draw("N=1..8 A2=1..3 A3=1..2", ("[N, N, A2, A3] F32 cont",), "[N, N, A2, A3] F32"),
}
