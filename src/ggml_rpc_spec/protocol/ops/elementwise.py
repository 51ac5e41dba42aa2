"""Arithmetic element by element, with ggml's implicit repeat (broadcast) of src1."""

from .spec import Draw, OpSpec, Param, Source

_BINARY = (
    Source("a", "the left operand, shape of the result"),
    Source("b", "the right operand, repeated over a (each dimension divides a's)"),
)
_UNARY = (Source("a", "the values"),)
_FLOATS = "F32, F16, BF16"
_BINARY_TYPES = (
    "F32, F16, BF16 with a, b and result alike; or a F16/BF16 with b F32 and the result as a or F32"
    " (ADD also takes a quantized a with b F32)"
)

SPECS = (
    *(
        OpSpec(
            name=name,
            sources=_BINARY,
            params=(),
            types=_BINARY_TYPES,
            result="as a",
            semantics=f"result = a {sign} repeat(b), in float32 per element, rounded once to the result's type",
        )
        for name, sign in (("ADD", "+"), ("SUB", "-"), ("MUL", "*"), ("DIV", "/"))
    ),
    OpSpec(
        name="ADD1",
        sources=(Source("a", "the values"), Source("b", "a single value [1, 1, 1, 1]")),
        params=(),
        types="a F32, F16, BF16 (or quantized), b F32 or as a; result as a",
        result="as a",
        semantics="result = a + b[0]",
    ),
    OpSpec(
        name="ADD_ID",
        sources=(
            Source("a", "the values [n, used, tokens, 1]"),
            Source("b", "one bias row per expert [n, experts]"),
            Source("ids", "I32 expert ids [used, tokens] (a view; only its first plane is read)", index_rule="exec.expert-ids"),
        ),
        params=(),
        types="a, b and result F32; ids I32",
        result="as a",
        semantics="result[i3, i2, i1, :] = a[i3, i2, i1, :] + b[0, 0, ids[0, 0, i2, i1], :]; every id MUST be in "
        "[0, experts)",
    ),
    *(
        OpSpec(name=name, sources=_UNARY, params=(), types=_FLOATS, result="as a", semantics=f"result = {formula}")
        for name, formula in (
            ("SQR", "a * a"),
            ("SQRT", "sqrt(a)"),
            ("LOG", "log(a)"),
            ("SIN", "sin(a)"),
            ("COS", "cos(a)"),
        )
    ),
    OpSpec(
        name="SCALE",
        sources=_UNARY,
        params=(Param(0, "s", "f32", "factor"), Param(1, "b", "f32", "bias (0 before ggml added it)")),
        types="F32, BF16 (a and result alike); 3.6.1's ggml and older: F32 only.  ggml's CPU aborts on F16",
        result="as a",
        semantics="result = a * s + b",
    ),
    OpSpec(
        name="CLAMP",
        sources=_UNARY,
        params=(Param(0, "min", "f32", "lower bound"), Param(1, "max", "f32", "upper bound")),
        types="F32, F16 (a and result alike)",
        result="as a (0.3.20's ggml makes it a view of a: in place)",
        semantics="result = max(min(a, max), min), as C's MIN/MAX macros (NaN becomes max)",
    ),
    OpSpec(
        name="LEAKY_RELU",
        sources=_UNARY,
        params=(Param(0, "slope", "f32", "factor of the negative values"),),
        types="F32, F16 (a and result alike)",
        result="as a",
        semantics="result = max(a, 0) + slope * min(a, 0)",
    ),
)

_DIMS = "A0=1..9 A1=1..6 A2=1..3 A3=1..2"
_BROADCAST = "B0=1|A0 B1=1|A1 B2=1|A2 B3=1|A3"


def _binary(values: str = "") -> Draw:
    return Draw(f"T=F32|F16 {_DIMS} {_BROADCAST}", ("[A0, A1, A2, A3] T rows", f"[B0, B1, B2, B3] T rows {values}"),
                "[A0, A1, A2, A3] T")


def _unary(types: str = "F32|F16", values: str = "") -> Draw:
    return Draw(f"T={types} {_DIMS}", (f"[A0, A1, A2, A3] T rows {values}",), "[A0, A1, A2, A3] T")


# How to draw a valid node of each op (differential fuzzing; see spec.Draw).
DRAWS = {
    "ADD": _binary(),
    "SUB": _binary(),
    "MUL": _binary(),
    "DIV": _binary("pos"),
    "ADD1": Draw(f"T=F32|F16 {_DIMS}", ("[A0, A1, A2, A3] T rows", "[1, 1, 1, 1] T"), "[A0, A1, A2, A3] T"),
    "ADD_ID": Draw("N=1..9 E=1..4 U=1..E Tk=1..4", ("[N, U, Tk, 1] F32 rows", "[N, E] F32 rows", "[U, Tk] I32 ids<E"),
                   "[N, U, Tk, 1] F32"),
    "SQR": _unary(),
    "SQRT": _unary(values="pos"),
    "LOG": _unary(values="pos"),
    "SIN": _unary(),
    "COS": _unary(),
    "SCALE": Draw(f"{_DIMS}", ("[A0, A1, A2, A3] F32 cont",), "[A0, A1, A2, A3] F32"),
    "CLAMP": Draw(f"T=F32|F16 {_DIMS} min=-1|-0.5 max=0.5|1", ("[A0, A1, A2, A3] T rows",), "[A0, A1, A2, A3] T"),
    "LEAKY_RELU": _unary("F32"),
}
