"""Matrix products."""

from . import OpSpec, Param, Source

SPECS = (
    OpSpec("MUL_MAT", "matmul",
           (Source("a", "weights [K, N, a2, a3], any readable type"),
            Source("b", "activations [K, M, b2, b3]; a2 divides b2 and a3 divides b3")),
           (Param(0, "prec", "enum:DEFAULT=0,F32=10,BF16=15,F16=20", "requested accumulation precision"),
            Param(1, "hint", "enum:NONE=0,SRC0_IS_HADAMARD=1", "what src0 is known to be")),
           "a any readable type, b F32 (or F16 / BF16), result F32", "[N, M, b2, b3]",
           "result[i3,i2,m,n] = sum_k a[i3/r3, i2/r2, n, k] * b[i3, i2, m, k]"),
)
