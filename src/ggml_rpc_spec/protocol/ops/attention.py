"""Attention: softmax with masks and biases, causal masks, fused attention, DSA's indexer."""

from .spec import Draw, OpSpec, Param, Source

_N_PAST = (Param(0, "n_past", "i32", "columns every row keeps beyond its own index", 0),)

SPECS = (
    OpSpec(
        name="SOFT_MAX",
        sources=(
            Source("a", "the scores"),
            Source(
                "mask",
                "added to the scores, F32 or F16 [ne0, >= ne1, ne2 / r2, ne3 / r3]: dims 2 and 3 "
                "repeat (index modulo size)",
                optional=True,
            ),
            Source("sinks", "F32 [heads]: one extra logit per head that takes part in the sum only", optional=True),
        ),
        params=(
            Param(0, "scale", "f32", "factor applied to the scores first"),
            Param(1, "max_bias", "f32", "ALiBi: > 0 scales the mask per head by a slope", 0),
        ),
        types="F32 (a and result)",
        result="as a",
        semantics="per row, softmax(a * scale + slope(head) * mask) with the sink in the sum (float32, sum in double)",
    ),
    OpSpec(
        name="DIAG_MASK_INF",
        sources=(Source("a", "the scores"),),
        params=_N_PAST,
        types="F32",
        result="as a",
        semantics="element (i0, i1) of every matrix becomes -inf where i0 > n_past + i1, the rest is copied",
    ),
    OpSpec(
        name="DIAG_MASK_ZERO",
        sources=(Source("a", "the scores"),),
        params=_N_PAST,
        types="F32",
        result="as a",
        semantics="element (i0, i1) of every matrix becomes 0 where i0 > n_past + i1, the rest is copied",
    ),
    OpSpec(
        name="FLASH_ATTN_EXT",
        sources=(
            Source("q", "queries [Dk, n_q, heads, a3]"),
            Source("k", "keys [Dk, n_kv, kv_heads, k3]"),
            Source("v", "values [Dv, n_kv, v_heads, v3] (not transposed)"),
            Source("mask", "F16 [>= n_kv, >= n_q, heads / r2, a3 / r3]: dims 2 and 3 repeat", optional=True),
            Source("sinks", "F32 [heads]", optional=True),
        ),
        params=(
            Param(0, "scale", "f32", "factor applied to q.k"),
            Param(1, "max_bias", "f32", "ALiBi max bias", 0),
            Param(2, "logit_softcap", "f32", "0, or c: scores become c * tanh(scores / c)"),
            Param(3, "prec", "enum:DEFAULT=0,F32=10,BF16=15,F16=20",
                  "requested accumulator precision, any ggml_prec (BF16 and F16 from 0.3.36's ggml); ggml's CPU "
                  "aborts on any but DEFAULT and F32 and ignores which of the two it is: it accumulates in F32, "
                  "except the weighted sum of V, which its row-at-a-time path accumulates in F16 when V is F16",
                  inert=True),
            Param(
                4,
                "n_kv_max",
                "i32",
                "0.3.36 on: bound on the finite entries of every mask row, a hint for "
                "sparse backends (0: off); the result does not depend on it",
                0,
                inert=True,
            ),
        ),
        types="q F32, k/v F32, F16, BF16 or quantized, result F32",
        result="[Dv, heads, n_q, a3]",
        semantics="softmax(q.k * scale (softcapped) + slope(head) * mask, sink) . v per head; q head h reads k/v head "
        "h / (heads / kv_heads)",
    ),
    OpSpec(
        name="LIGHTNING_INDEXER",
        sources=(
            Source("q", "F32 [D, heads, tokens, streams]"),
            Source("k", "[D, 1, n_kv, streams], any readable type"),
            Source("weights", "F32 [heads, tokens, 1, streams], prescaled"),
            Source("mask", "F16 [n_kv, tokens, 1, streams / r3]: dim 3 repeats"),
        ),
        params=(),
        types="q, weights F32; mask F16; result F32",
        result="[n_kv, tokens, 1, streams]",
        semantics="score[j] = sum_h relu(q_h . k_j) * weights_h + mask[j], per token and stream (DeepSeek sparse attention)",
    ),
)

_ROWS = "A0=1..12 A1=1..6 A2=1..4 A3=1..2"

# How to draw a valid node of each op (differential fuzzing; see spec.Draw).  ALiBi (a max_bias
# above 0) acts through the mask: drawn only with one.
DRAWS = {
    "SOFT_MAX": Draw(
        "M2=1..2 R2=1..2 A0=1..12 A1=1..6 A2=M2*R2 A3=1..2 P=0..2 HM=0|1 HS=0|1 max_bias=0|8*HM|0.5*HM",
        ("[A0, A1, A2, A3] F32 rows", "[A0, A1+P, M2, A3] F32|F16 mask absent:not(HM)",
         "[A2] F32 absent:not(HS)"),
        "[A0, A1, A2, A3] F32",
        nmse=1e-6,
    ),
    "DIAG_MASK_INF": Draw(_ROWS, ("[A0, A1, A2, A3] F32 cont",), "[A0, A1, A2, A3] F32"),
    "DIAG_MASK_ZERO": Draw(_ROWS, ("[A0, A1, A2, A3] F32 cont",), "[A0, A1, A2, A3] F32"),
    "FLASH_ATTN_EXT": Draw(
        "T=F16|F32 D=32|64 DV=D NQ=1..5 NKV=1..9 HKV=1..2 G=1..2 H=HKV*G HM=0|1 HS=0|1 max_bias=0|8*HM "
        "logit_softcap=0|30 n_kv_max=0|NKV prec=DEFAULT|F32",
        ("[D, NQ, H, 1] F32 rows", "[D, NKV, HKV, 1] T rows", "[DV, NKV, HKV, 1] T rows",
         "[NKV, NQ, 1, 1] F16 mask absent:not(HM)", "[H] F32 absent:not(HS)"),
        "[DV, H, NQ, 1] F32",
        nmse=5e-4,
    ),
    "LIGHTNING_INDEXER": Draw(
        "D=8|32 H=1..4 Tk=1..4 NKV=1..9 S=1..2",
        ("[D, H, Tk, S] F32 cont", "[D, 1, NKV, S] F32|F16 cont", "[H, Tk, 1, S] F32 cont",
         "[NKV, Tk, 1, S] F16 mask cont"),
        "[NKV, Tk, 1, S] F32",
        nmse=1e-6,
    ),
}
