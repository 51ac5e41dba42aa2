"""Activation functions (UNARY, by sub-op) and gated linear units (GLU, by sub-op)."""

from .spec import Draw, OpSpec, Param, Source, SubOp

_UNARY_SUBS = (
    SubOp("ABS", "|x|"),
    SubOp("SGN", "sign(x) (0 at 0)"),
    SubOp("NEG", "-x"),
    SubOp("STEP", "1 if x > 0 else 0"),
    SubOp("TANH", "tanh(x)"),
    SubOp("ELU", "x if x > 0 else expm1(x)"),
    SubOp("RELU", "max(x, 0)"),
    SubOp("SIGMOID", "1 / (1 + exp(-x))"),
    SubOp("GELU", "0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))), through an F16 table on ggml's CPU"),
    SubOp("GELU_QUICK", "x * sigmoid(1.702x), through an F16 table on ggml's CPU"),
    SubOp("SILU", "x * sigmoid(x)"),
    SubOp("HARDSWISH", "x * min(1, max(0, (x + 3) / 6))"),
    SubOp("HARDSIGMOID", "min(1, max(0, (x + 3) / 6))"),
    SubOp("EXP", "exp(x)"),
    SubOp("EXPM1", "exp(x) - 1 (as written: not expm1)"),
    SubOp("SOFTPLUS", "log(1 + exp(x)), x above 20 as is"),
    SubOp("GELU_ERF", "0.5x(1 + erf(x / sqrt(2)))"),
    SubOp(
        "XIELU",
        "alpha_p x^2 + beta x if x > 0 else (expm1(min(x, eps)) - x) alpha_n + beta x",
        (
            Param(1, "alpha_n", "f32", "negative slope as stored: beta + softplus(the caller's alpha_n)"),
            Param(2, "alpha_p", "f32", "positive factor as stored: softplus(the caller's alpha_p)"),
            Param(3, "beta", "f32", "linear factor"),
            Param(4, "eps", "f32", "upper bound of expm1's argument"),
        ),
    ),
    SubOp("FLOOR", "floor(x)"),
    SubOp("CEIL", "ceil(x)"),
    SubOp("ROUND", "x rounded half away from zero"),
    SubOp("TRUNC", "x rounded toward zero"),
)

_GLU_SUBS = (
    SubOp("REGLU", "relu(x) * g"),
    SubOp("GEGLU", "gelu(x) * g"),
    SubOp("SWIGLU", "silu(x) * g"),
    SubOp(
        "SWIGLU_OAI",
        "min(x, limit) * sigmoid(alpha * min(x, limit)) * (clamp(g, -limit, limit) + 1)",
        (Param(2, "alpha", "f32", "sigmoid slope"), Param(3, "limit", "f32", "clamp bound")),
    ),
    SubOp("GEGLU_ERF", "gelu_erf(x) * g"),
    SubOp("GEGLU_QUICK", "gelu_quick(x) * g"),
    SubOp(
        "SWIGLU_CLAMP", "silu(min(x, limit)) * clamp(g, -limit, limit)", (Param(3, "limit", "f32", "clamp bound"),)
    ),
)

SPECS = (
    OpSpec(
        name="UNARY",
        sources=(Source("a", "the values"),),
        params=(Param(0, "op", "unary_op", "the function"),),
        types="F32, F16, BF16 (a and result alike, or a F16/BF16 and result F32)",
        result="as a",
        semantics="result = f(a) element by element in float32, f named by op",
        sub_ops=_UNARY_SUBS,
    ),
    OpSpec(
        name="GLU",
        sources=(
            Source("a", "x (split form), or rows holding x and g side by side (fused form)"),
            Source("b", "g, shape of a (split form)", optional=True),
        ),
        params=(
            Param(0, "op", "glu_op", "the gated unit"),
            Param(1, "swapped", "bool", "fused form: g is the first half of each row, x the second"),
        ),
        types="F32, F16, BF16 (a, b and result alike)",
        result="as a (split), or a with rows of a0 // 2 elements (fused: x and g are the first and second a0 // 2 "
        "elements of each row of a, an odd last element unused)",
        semantics="result = act(x) * g, act named by op",
        sub_ops=_GLU_SUBS,
    ),
)

# How to draw a valid node of each op (differential fuzzing; see spec.Draw).  GLU: the split
# form (b given) or the fused one (x and g side by side in each row of a); SWIGLU_OAI is F32
# only on ggml's CPU.
DRAWS = {
    "UNARY": Draw("T=F32|F16 A0=1..9 A1=1..6 A2=1..3 A3=1..2", ("[A0, A1, A2, A3] T cont1",), "[A0, A1, A2, A3] T"),
    "GLU": Draw(
        "T=F32|('F32'if(sub=='SWIGLU_OAI')else'F16') H=1..8 A1=1..6 A2=1..3 A3=1..2 split=0|1",
        ("[H if split else 2*H, A1, A2, A3] T cont1", "[H, A1, A2, A3] T cont1 absent:not(split)"),
        "[H, A1, A2, A3] T",
    ),
}
