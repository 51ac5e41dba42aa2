"""Attention: softmax with masks and biases, fused attention."""

from . import OpSpec, Param, Source

SPECS = (
    OpSpec("SOFT_MAX", "attention",
           (Source("a", "the scores"), Source("mask", "added to the scores, F32 or F16, broadcast over heads",
                                              optional=True),
            Source("sinks", "F32 [heads]: one extra logit per head that takes part in the sum only", optional=True)),
           (Param(0, "scale", "f32", "factor applied to the scores first"),
            Param(1, "max_bias", "f32", "ALiBi: > 0 scales the mask per head by a slope", 0)),
           "F32 (a and result)", "as a", "per row, softmax(a * scale + slope(head) * mask)"),
    OpSpec("FLASH_ATTN_EXT", "attention",
           (Source("q", "queries [D, n_q, heads, a3]"), Source("k", "keys [D, n_kv, kv_heads, k3]"),
            Source("v", "values [Dv, n_kv, kv_heads, v3]"),
            Source("mask", "F16 [n_kv, n_q padded, 1 or heads, 1 or a3]", optional=True),
            Source("sinks", "F32 [heads]", optional=True)),
           (Param(0, "scale", "f32", "factor applied to q.k"), Param(1, "max_bias", "f32", "ALiBi max bias", 0),
            Param(2, "logit_softcap", "f32", "0, or c: scores become c * tanh(scores / c)"),
            Param(3, "prec", "enum:DEFAULT=0,F32=10", "requested precision")),
           "q F32, k/v F16 or any readable type, result F32", "[Dv, heads, n_q, a3]",
           "softmax(q.k * scale (+ mask)) . v per head, heads sharing k/v when fewer"),
)
