"""Arithmetic element by element, with ggml's implicit repeat (broadcast) of src1."""

from . import OpSpec, Param, Source

_BINARY = (Source("a", "the left operand, shape of the result"),
           Source("b", "the right operand, repeated over a (each dimension divides a's)"))
_UNARY = (Source("a", "the values"),)
_FLOATS = "F32, F16, BF16"

SPECS = (
    *(OpSpec(name, "elementwise", _BINARY, (), f"{_FLOATS} (a and result alike; b any of them)", "as a",
             f"result = a {sign} repeat(b)")
      for name, sign in (("ADD", "+"), ("SUB", "-"), ("MUL", "*"), ("DIV", "/"))),
    *(OpSpec(name, "elementwise", _UNARY, (), _FLOATS, "as a", f"result = {formula}")
      for name, formula in (("SQR", "a * a"), ("SQRT", "sqrt(a)"), ("LOG", "log(a)"), ("SIN", "sin(a)"),
                            ("COS", "cos(a)"))),
    OpSpec("SCALE", "elementwise", _UNARY,
           (Param(0, "s", "f32", "factor"), Param(1, "b", "f32", "bias (0 before ggml added it)")),
           _FLOATS, "as a", "result = a * s + b"),
)
