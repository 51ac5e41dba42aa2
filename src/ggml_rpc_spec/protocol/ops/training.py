"""Gradients, losses and optimizer steps."""

from .spec import Draw, OpSpec, Param, Source

SPECS = (
    OpSpec(
        name="SILU_BACK",
        sources=(Source("dy", "the gradient of silu's output"), Source("x", "silu's input")),
        params=(),
        types="F32, F16 (all alike)",
        result="as x",
        semantics="result = dy * s * (1 + x * (1 - s)), s = sigmoid(x)",
    ),
    OpSpec(
        name="RMS_NORM_BACK",
        sources=(Source("dz", "the gradient of rms_norm's output"), Source("x", "rms_norm's input")),
        params=(Param(0, "eps", "f32", "the eps of the forward rms_norm", 0),),
        types="F32",
        result="as x",
        semantics="per row, result = (dz - x * sum(x * dz) / (sum(x * x) + eps * n)) / sqrt(mean(x * x) + eps)",
    ),
    OpSpec(
        name="SOFT_MAX_BACK",
        sources=(Source("dy", "the gradient of soft_max's output"), Source("y", "soft_max's output")),
        params=(
            Param(0, "scale", "f32", "the scale of the forward soft_max"),
            Param(1, "max_bias", "f32", "the forward ALiBi max bias: ggml's CPU takes only 0", 0, 0),
        ),
        types="F32",
        result="as y",
        semantics="per row, result = scale * y * (dy - y . dy)",
    ),
    OpSpec(
        name="CROSS_ENTROPY_LOSS",
        sources=(
            Source("logits", "the logits, one distribution per row"),
            Source("labels", "the target probabilities, shape of logits"),
        ),
        params=(),
        types="F32",
        result="[1, 1, 1, 1]",
        semantics="-(1 / rows) * sum over rows of labels . log_softmax(logits)",
    ),
    OpSpec(
        name="CROSS_ENTROPY_LOSS_BACK",
        sources=(
            Source("grad", "F32 scalar: the gradient of the loss"),
            Source("logits", "the forward logits"),
            Source("labels", "the forward labels"),
        ),
        params=(),
        types="F32",
        result="as logits",
        semantics="per row, result = (softmax(logits) - labels) * grad / rows",
    ),
    OpSpec(
        name="OPT_STEP_ADAMW",
        sources=(
            Source("a", "the parameters, updated in place (the result is a view of a)"),
            Source("grad", "their gradient"),
            Source("m", "first moments, updated in place"),
            Source("v", "second moments, updated in place"),
            Source("params", "F32 [7]: alpha, beta1, beta2, eps, wd, beta1h, beta2h"),
        ),
        params=(),
        types="F32",
        result="as a (a view of it)",
        semantics="m = m * beta1 + g * (1 - beta1); v = v * beta2 + g^2 * (1 - beta2); "
        "a = a * (1 - alpha * wd) - alpha * m * beta1h / (sqrt(v * beta2h) + eps)",
    ),
    OpSpec(
        name="OPT_STEP_SGD",
        sources=(
            Source("a", "the parameters, updated in place (the result is a view of a)"),
            Source("grad", "their gradient"),
            Source("params", "F32 [2]: alpha, wd"),
        ),
        params=(),
        types="F32",
        result="as a (a view of it)",
        semantics="a = a * (1 - alpha * wd) - alpha * grad",
    ),
    OpSpec(
        name="FLASH_ATTN_BACK",
        sources=(
            Source("q", "queries [D, N, heads, a3]"),
            Source("k", "keys [D, M, kv_heads, a3], M >= N"),
            Source("v", "values, transposed [M, D, kv_heads, a3]"),
            Source("d", "the gradient of the attention output [D, N, heads, a3]"),
        ),
        params=(Param(0, "masked", "i32", "1: causal, query i sees keys 0 .. M - N + i; 0: all keys", 0, 1),),
        types="F32",
        result="F32, at least [grad q | grad k | grad v], each part padded to 16 bytes",
        semantics="the gradients of softmax(q.k / sqrt(D)) . v, query head h using kv head h % kv_heads: grad q "
        "[D, N, heads, a3], grad k [D, M, kv_heads, a3], grad v [M, D, kv_heads, a3]; ggml_flash_attn_back() "
        "aborts in every release with a protocol version, but ggml's CPU computes the op",
    ),
)

_DIMS = "A0=1..9 A1=1..6 A2=1..3 A3=1..2"
_SAME = ("[A0, A1, A2, A3] F32 rows", "[A0, A1, A2, A3] F32 rows")

# How to draw a valid node of each op (differential fuzzing; see spec.Draw).
DRAWS = {
    "SILU_BACK": Draw(f"T=F32|F16 {_DIMS}", ("[A0, A1, A2, A3] T rows", "[A0, A1, A2, A3] T rows"),
                      "[A0, A1, A2, A3] T"),
    "RMS_NORM_BACK": Draw(_DIMS, _SAME, "[A0, A1, A2, A3] F32"),
    "SOFT_MAX_BACK": Draw(_DIMS, ("[A0, A1, A2, A3] F32 cont", "[A0, A1, A2, A3] F32 cont"), "[A0, A1, A2, A3] F32"),
    "CROSS_ENTROPY_LOSS": Draw("A0=1..9 A1=1..6", ("[A0, A1] F32 cont", "[A0, A1] F32 cont pos"), "[1, 1, 1, 1] F32"),
    "CROSS_ENTROPY_LOSS_BACK": Draw("A0=1..9 A1=1..6", ("[1] F32", "[A0, A1] F32 cont", "[A0, A1] F32 cont pos"),
                                    "[A0, A1] F32"),
    "OPT_STEP_ADAMW": Draw(_DIMS, ("[A0, A1, A2, A3] F32 cont",) * 3 + ("[A0, A1, A2, A3] F32 cont pos",
                                                                      "[7] F32 cont pos"), "view 0"),
    "OPT_STEP_SGD": Draw(_DIMS, ("[A0, A1, A2, A3] F32 cont", "[A0, A1, A2, A3] F32 cont", "[2] F32 cont pos"),
                         "view 0"),
    "FLASH_ATTN_BACK": Draw(
        "D=1..8 N=1..4 M=N..N+3 HKV=1..2 G=1..2 H=HKV*G A3=1",
        ("[D, N, H, A3] F32 cont", "[D, M, HKV, A3] F32 cont", "[M, D, HKV, A3] F32 cont", "[D, N, H, A3] F32 cont"),
        "[4*ceil(D*N*H*A3/4)+8*ceil(D*M*HKV*A3/4)] F32",
    ),
}
