"""Arithmetic element by element, with ggml's implicit repeat (broadcast) of src1."""

from .spec import OpSpec, Param, Source

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
