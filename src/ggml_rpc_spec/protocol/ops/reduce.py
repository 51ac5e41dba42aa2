"""Reductions over rows or whole tensors, sorting and selection, and the DeepSeek-V4
hyper-connection mixers.

Where ggml's CPU reads a source's rows as contiguous runs of ne0 elements from each row's
start whatever its nb0 (SUM, MEAN, ARGMAX, ARGSORT, TOP_K), the semantics say "rows read
contiguously": that is what the peers compute, and so what the reference computes."""

from .spec import OpSpec, Param, Source

_A = (Source("a", "the values"),)

SPECS = (
    OpSpec("SUM", "reduce", _A, (), "F32, F16, BF16 (a and result alike)", "[1, 1, 1, 1]",
           "the sum of every element of a, rows read contiguously; F32 accumulates in double, F16/BF16 in "
           "float, row by row"),
    OpSpec("SUM_ROWS", "reduce", _A, (), "F32", "[1, a1, a2, a3]", "the sum of each row of a (in double)"),
    OpSpec("MEAN", "reduce", _A, (), "F32", "[1, a1, a2, a3]",
           "the sum of each row of a (in double, rows read contiguously), as float, divided by a0"),
    OpSpec("ARGMAX", "reduce", _A, (), "F32 in, I32 out", "[a1]",
           "per row of the matrix a (rows read contiguously), the index of its largest value: the last one on "
           "ties; a NaN restarts the running maximum"),
    OpSpec("COUNT_EQUAL", "reduce", (Source("a", "I32 values"), Source("b", "I32 values, shape of a")), (),
           "I32 in, I64 out", "[1, 1, 1, 1]", "how many elements of a equal b's at the same position"),
    OpSpec("CUMSUM", "reduce", _A, (), "F32", "as a",
           "per row, the running sum of a (in float, left to right)"),
    OpSpec("ARGSORT", "reduce", _A, (Param(0, "order", "enum:ASC=0,DESC=1", "sort order"),), "F32 in, I32 out",
           "as a", "per row (rows at a1's stride, numbered across a1..a3), the indices that sort it; the order "
           "of equal values is unspecified"),
    OpSpec("TOP_K", "reduce", _A, (), "F32 in, I32 out", "[k, a1, a2, a3], k <= a0",
           "per row (rows at a1's stride, numbered across a1..a3), the indices of its k largest values, "
           "largest first, then the first two swapped (the order is not part of the contract)"),
    OpSpec("DSV4_HC_COMB", "reduce",
           (Source("mixes", "F32 [(2 + hc) * hc, tokens], hc = 4"), Source("scale", "F32 [>= 3]; scale[2] is used"),
            Source("base", "F32 [(2 + hc) * hc]")),
           (Param(0, "eps", "f32", "added after the softmax and to every normalising sum"),
            Param(1, "n_iter", "i32", "normalisation rounds (the first normalises columns only)", 1)),
           "F32", "[hc, hc, tokens]",
           "logits[d, s] = mixes[2hc + d + hc*s] * scale[2] + base[2hc + d + hc*s]; softmax over d, + eps; "
           "normalise over s; then n_iter - 1 rounds normalising over d then over s (sums start at eps)"),
    OpSpec("DSV4_HC_PRE", "reduce",
           (Source("x", "F32 [n_embd, hc, tokens]"),
            Source("weights", "F32 [hc, tokens], or the gate [n_embd, hc, tokens] when gated")),
           (Param(0, "scale", "f32", "factor applied to the sum (1 when not gated)"),
            Param(1, "gated", "bool", "weights are a per-element gate passed through a sigmoid")),
           "F32", "[n_embd, tokens]",
           "result[i, t] = scale * sum_h x[i, h, t] * w, w = weights[h, t] or sigmoid(gate[i, h, t])"),
    OpSpec("DSV4_HC_POST", "reduce",
           (Source("x", "F32 [n_embd, tokens]"), Source("residual", "F32 [n_embd, hc, tokens]"),
            Source("post", "F32 [hc, tokens]"),
            Source("comb", "F32 [hc (dst), hc (src), tokens]; absent: the identity", optional=True)),
           (), "F32", "[n_embd, hc, tokens]",
           "result[i, d, t] = x[i, t] * post[d, t] + sum_s residual[i, s, t] * comb[d, s, t]"),
)
