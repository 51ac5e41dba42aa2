"""Matrix products.

The precision words of MUL_MAT / MUL_MAT_ID are requests about the least precision an
implementation may use (ggml.h [TAG_GGML_PREC]): word 0 the accumulator (ggml_prec_set_acc,
formerly ggml_mul_mat_set_prec), word 3 how far src1 may be rounded (ggml_prec_set_src with
idx 1; word 2 would be src0's, which ggml refuses to set).  ggml 0.3.20 has only word 0
(DEFAULT=0 or F32=10); 0.3.36 adds BF16/F16/Q8/Q4, word 1 (the MUL_MAT hint) and word 3.
ggml's CPU backend reads none of them except the hint, and that only outside its reference
mode; a float32 product honours every one of them.
"""

from .spec import Draw, OpSpec, Param, Source

PREC = "enum:DEFAULT=0,F32=10,BF16=15,F16=20,Q8=30,Q4=40"

SPECS = (
    OpSpec(
        name="MUL_MAT",
        sources=(
            Source("a", "weights [K, N, a2, a3], any readable type, rows not transposed"),
            Source("b", "activations [K, M, b2, b3]; a2 divides b2 and a3 divides b3"),
        ),
        params=(
            Param(0, "prec", PREC, "least accumulator precision requested (ggml_prec_set_acc)", inert=True),
            Param(
                1,
                "hint",
                "enum:NONE=0,SRC0_IS_HADAMARD=1",
                "what src0 is promised to be (0.3.36: a Hadamard matrix lets a backend use a fast transform)",
                inert=True,
            ),
            Param(
                3, "prec_src1", PREC, "least precision src1 may be rounded to (ggml_prec_set_src(t, p, 1); 0.3.36)",
                inert=True,
            ),
        ),
        types="a any readable type, b F32 (or F16 / BF16), result F32",
        result="[N, M, b2, b3]",
        semantics="result[i3,i2,m,n] = sum_k a[i3/(b3/a3), i2/(b2/a2), n, k] * b[i3, i2, m, k]",
    ),
    OpSpec(
        name="MUL_MAT_ID",
        sources=(
            Source("as", "one weight matrix per expert [K, N, E, 1], any readable type"),
            Source("b", "activations [K, B, T, 1]; B is the number of used experts, or 1 to share one row"),
            Source("ids", "I32 expert ids [U, T] (U used experts per token; B divides U)", index_rule="exec.expert-ids"),
        ),
        params=(
            Param(0, "prec", PREC, "least accumulator precision requested (ggml_prec_set_acc; 0.3.36)", inert=True),
            Param(
                3, "prec_src1", PREC, "least precision src1 may be rounded to (ggml_prec_set_src(t, p, 1); 0.3.36)",
                inert=True,
            ),
        ),
        types="as any readable type, b F32 (or F16 / BF16), ids I32, result F32",
        result="[N, U, T, 1]",
        semantics="result[t, u, n] = sum_k as[ids[t, u], n, k] * b[t, u % B, k]; every id MUST be in [0, E)",
    ),
    OpSpec(
        name="OUT_PROD",
        sources=(
            Source("a", "[M, K, a2, a3], F32 / F16 / any quantized type, rows not transposed"),
            Source("b", "[N, K, b2, b3] F32; a2 divides b2 and a3 divides b3"),
        ),
        params=(),
        types="a F32, F16 or quantized, b F32, result F32",
        result="[M, N, b2, b3]",
        semantics="result[i3,i2,n,m] = sum_k a[i3/(b3/a3), i2/(b2/a2), k, m] * b[i3, i2, k, n]",
    ),
    OpSpec(
        name="SOLVE_TRI",
        sources=(
            Source("a", "lower triangular matrices [n, n, B2, B3] F32 (above the diagonal is not read)"),
            Source("b", "right-hand sides [k, n, B2, B3] F32"),
        ),
        params=(),
        types="F32 only",
        result="as b",
        semantics="solves a @ x = b by forward substitution per batch and column: "
        "x[i] = (b[i] - sum_{t<i} a[i, t] * x[t]) / a[i, i] in float32 (a zero diagonal gives inf/nan)",
    ),
)

_WEIGHTS = "W=F32|F16|BF16|Q8_0|Q4_0|Q4_1|Q5_0|Q5_1|Q4_K|Q6_K QB=256*(W[-1]=='K')+32*(W[-1]!='K') KB=1..2 K=QB*KB"

# How to draw a valid node of each op (differential fuzzing; see spec.Draw).  The MUL_MAT hint
# SRC0_IS_HADAMARD is a promise about src0's values that random weights do not keep: 0 here.
# OUT_PROD's src0 is F32 or quantized (0.3.20 has no F16 kernel; only F32 repeats over src1).
DRAWS = {
    "MUL_MAT": Draw(
        f"{_WEIGHTS} N=1..8 M=1..6 B2=1..3 R2=1..2 B3=1..2 R3=1..2 hint=0",
        ("[K, N, B2, B3] W rows", "[K, M, B2*R2, B3*R3] F32 rows"),
        "[N, M, B2*R2, B3*R3] F32",
        nmse=5e-4,
    ),
    "MUL_MAT_ID": Draw(
        f"{_WEIGHTS} N=1..8 E=1..4 U=1..E Bu=1|U Tk=1..4",
        ("[K, N, E, 1] W rows", "[K, Bu, Tk, 1] F32 rows", "[U, Tk] I32 ids<E"),
        "[N, U, Tk, 1] F32",
        nmse=5e-4,
    ),
    "OUT_PROD": Draw(
        "T=F32|Q8_0 MB=1..4 M=MB*(2+30*(T=='Q8_0')) K=1..8 N=1..6 A2=1..2 R2=1|1+(T=='F32') A3=1..2 R3=1|1+(T=='F32')",
        ("[M, K, A2, A3] T rows", "[N, K, A2*R2, A3*R3] F32"),
        "[M, N, A2*R2, A3*R3] F32",
        nmse=5e-4,
    ),
    "SOLVE_TRI": Draw("N=1..6 K=1..4 B2=1..2 B3=1..2", ("[N, N, B2, B3] F32 cont pos", "[K, N, B2, B3] F32 cont"),
                      "[K, N, B2, B3] F32"),
}
