"""Reductions over rows or whole tensors, sorting and selection, and the DeepSeek-V4
hyper-connection mixers.

Where ggml's CPU reads a source's rows as contiguous runs of ne0 elements from each row's
start whatever its nb0 (SUM, MEAN, ARGMAX, ARGSORT, TOP_K), the semantics say "rows read
contiguously": that is what the peers compute, and so what the reference computes."""

from .spec import Draw, OpSpec, Param, Source

_A = (Source("a", "the values"),)

SPECS = (
    OpSpec(
        name="SUM",
        sources=_A,
        params=(),
        types="F32, F16, BF16 (a and result alike)",
        result="[1, 1, 1, 1]",
        semantics="the sum of every element of a, rows read contiguously; F32 accumulates in double, F16/BF16 in "
        "float, row by row",
    ),
    OpSpec(
        name="SUM_ROWS",
        sources=_A,
        params=(),
        types="F32",
        result="[1, a1, a2, a3]",
        semantics="the sum of each row of a (in double)",
    ),
    OpSpec(
        name="MEAN",
        sources=_A,
        params=(),
        types="F32",
        result="[1, a1, a2, a3]",
        semantics="the sum of each row of a (in double, rows read contiguously), as float, divided by a0",
    ),
    OpSpec(
        name="ARGMAX",
        sources=_A,
        params=(),
        types="F32 in, I32 out",
        result="[a1]",
        semantics="per row of the matrix a (rows read contiguously), the index of its largest value: the last one on "
        "ties; a NaN restarts the running maximum",
    ),
    OpSpec(
        name="COUNT_EQUAL",
        sources=(Source("a", "I32 values"), Source("b", "I32 values, shape of a")),
        params=(),
        types="I32 in, I64 out",
        result="[1, 1, 1, 1]",
        semantics="how many elements of a equal b's at the same position",
    ),
    OpSpec(
        name="CUMSUM",
        sources=_A,
        params=(),
        types="F32",
        result="as a",
        semantics="per row, the running sum of a (in float, left to right)",
    ),
    OpSpec(
        name="ARGSORT",
        sources=_A,
        params=(Param(0, "order", "enum:ASC=0,DESC=1", "sort order"),),
        types="F32 in, I32 out",
        result="as a",
        semantics="per row (rows at a1's stride, numbered across a1..a3), the indices that sort it; the order "
        "of equal values is unspecified",
    ),
    OpSpec(
        name="TOP_K",
        sources=_A,
        params=(),
        types="F32 in, I32 out",
        result="[k, a1, a2, a3], k <= a0",
        semantics="per row (rows at a1's stride, numbered across a1..a3), the indices of its k largest values, "
        "largest first, then the first two swapped (the order is not part of the contract)",
    ),
    OpSpec(
        name="DSV4_HC_COMB",
        sources=(
            Source("mixes", "F32 [(2 + hc) * hc, tokens], hc = 4"),
            Source("scale", "F32 [>= 3]; scale[2] is used"),
            Source("base", "F32 [(2 + hc) * hc]"),
        ),
        params=(
            Param(0, "eps", "f32", "added after the softmax and to every normalising sum"),
            Param(1, "n_iter", "i32", "normalisation rounds (the first normalises columns only)", 1),
        ),
        types="F32",
        result="[hc, hc, tokens]",
        semantics="logits[d, s] = mixes[2hc + d + hc*s] * scale[2] + base[2hc + d + hc*s]; softmax over d, + eps; "
        "normalise over s; then n_iter - 1 rounds normalising over d then over s (sums start at eps)",
    ),
    OpSpec(
        name="DSV4_HC_PRE",
        sources=(
            Source("x", "F32 [n_embd, hc, tokens]"),
            Source("weights", "F32 [hc, tokens], or the gate [n_embd, hc, tokens] when gated"),
        ),
        params=(
            Param(0, "scale", "f32", "factor applied to the sum (1 when not gated)"),
            Param(1, "gated", "bool", "weights are a per-element gate passed through a sigmoid"),
        ),
        types="F32",
        result="[n_embd, tokens]",
        semantics="result[i, t] = scale * sum_h x[i, h, t] * w, w = weights[h, t] or sigmoid(gate[i, h, t])",
    ),
    OpSpec(
        name="DSV4_HC_POST",
        sources=(
            Source("x", "F32 [n_embd, tokens]"),
            Source("residual", "F32 [n_embd, hc, tokens]"),
            Source("post", "F32 [hc, tokens]"),
            Source("comb", "F32 [hc (dst), hc (src), tokens]; absent: the identity", optional=True),
        ),
        params=(),
        types="F32",
        result="[n_embd, hc, tokens]",
        semantics="result[i, d, t] = x[i, t] * post[d, t] + sum_s residual[i, s, t] * comb[d, s, t]",
    ),
)

_DIMS = "A0=1..9 A1=1..6 A2=1..3 A3=1..2"
_HC = "E=1..9 Tk=1..4"

# How to draw a valid node of each op (differential fuzzing; see spec.Draw).  COUNT_EQUAL is
# drawn 2-D: ggml's CPU (0.3.36) computes the row index of dimensions 2 and 3 wrongly.
DRAWS = {
    "SUM": Draw(f"T=F32|F16 {_DIMS}", ("[A0, A1, A2, A3] T rows",), "[1, 1, 1, 1] T"),
    "SUM_ROWS": Draw(_DIMS, ("[A0, A1, A2, A3] F32 rows",), "[1, A1, A2, A3] F32"),
    "MEAN": Draw(_DIMS, ("[A0, A1, A2, A3] F32 rows",), "[1, A1, A2, A3] F32"),
    "ARGMAX": Draw("A0=1..40 A1=1..6", ("[A0, A1] F32 rows",), "[A1] I32", nmse=0.0),
    "COUNT_EQUAL": Draw("A0=1..9 A1=1..6", ("[A0, A1] I32 cont", "[A0, A1] I32 cont"), "[1, 1, 1, 1] I64", nmse=0.0),
    "CUMSUM": Draw(_DIMS, ("[A0, A1, A2, A3] F32 rows",), "[A0, A1, A2, A3] F32"),
    "ARGSORT": Draw(_DIMS, ("[A0, A1, A2, A3] F32 rows",), "[A0, A1, A2, A3] I32", nmse=0.0),
    "TOP_K": Draw(f"{_DIMS} K=1..A0", ("[A0, A1, A2, A3] F32 rows",), "[K, A1, A2, A3] I32", nmse=0.0, order=False),
    "DSV4_HC_COMB": Draw("Tk=1..4 S=3..4", ("[24, Tk] F32 cont", "[S] F32 cont", "[24] F32 cont"), "[4, 4, Tk] F32"),
    "DSV4_HC_PRE": Draw(
        f"{_HC} gated=0|1",
        ("[E, 4, Tk] F32 cont", "[E if gated else 4, 4 if gated else Tk, Tk if gated else 1] F32 cont"),
        "[E, Tk] F32",
    ),
    "DSV4_HC_POST": Draw(
        f"{_HC} comb=0|1",
        ("[E, Tk] F32 cont", "[E, 4, Tk] F32 cont", "[4, Tk] F32 cont", "[4, 4, Tk] F32 cont absent:not(comb)"),
        "[E, 4, Tk] F32",
    ),
}
