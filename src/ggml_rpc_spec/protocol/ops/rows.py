"""Row gathers and scatters by index tensors."""

from .spec import Draw, OpSpec, Source

SPECS = (
    OpSpec(
        name="GET_ROWS",
        sources=(Source("a", "the table [C, R, a2, a3]"), Source("rows", "I32 row indices [n, a2, a3]", index_rule="exec.rows-in-range")),
        params=(),
        types="a any type ggml's CPU reads (element or block type), rows I32, result F32 (I32 for an I32 table)",
        result="[C, n, a2, a3]",
        semantics="result[i3, i2, i, :] = a[i3, i2, rows[i3, i2, i], :] (decoded to float32); every index MUST be in "
        "[0, R)",
    ),
    OpSpec(
        name="SET_ROWS",
        sources=(
            Source("a", "the new rows [C, n, a2, a3]"),
            Source("rows", "I64 or I32 destination rows [n, r2, r3]", index_rule="exec.rows-in-range"),
            Source("dst", "the destination (the result is a view of it)", inert=True),
        ),
        params=(),
        types="a F32 (F16 since 0.3.36's ggml), rows I32/I64, result any type ggml's CPU writes (its from_float)",
        result="as dst",
        semantics="dst[i3, i2, rows[i3 % r3, i2 % r2, i], :] = a[i3, i2, i, :], each row converted as ggml's from_float "
        "does (F16 rows into F16 copied); every index MUST be in [0, dst rows)",
    ),
    OpSpec(
        name="GET_ROWS_BACK",
        sources=(
            Source("grad", "the gradient rows [C, n] (F32 or F16)"),
            Source("rows", "I32 indices [n], contiguous", index_rule="exec.rows-in-range"),
        ),
        params=(),
        types="grad F32/F16, rows I32, result F32 (contiguous)",
        result="[C, R] (the forward table's shape)",
        semantics="result = 0, then for i = 0..n-1 in order result[rows[i], :] += grad[i, :] (float32); every index "
        "MUST be in [0, R)",
    ),
)

# How to draw a valid node of each op (differential fuzzing; see spec.Draw).  SET_ROWS's
# indices are distinct within each row: two writes to one row race in a threaded ggml.
DRAWS = {
    "GET_ROWS": Draw(
        "T=F32|F16|BF16|Q8_0|Q4_0|Q4_K QB=256*(T=='Q4_K')+32*(T!='Q4_K') C=QB|2*QB R=1..8 n=1..6 A2=1..2 A3=1..2",
        ("[C, R, A2, A3] T rows", "[n, A2, A3] I32 ids<R"),
        "[C, n, A2, A3] F32",
        nmse=0.0,
    ),
    "SET_ROWS": Draw(
        "T=F32|F16|BF16|Q8_0|Q4_0 C=32|64 D=1..8 n=1..D R2=1..2 K2=1..2 R3=1..2",
        ("[C, n, R2*K2, R3] F32 rows", "[n, R2, R3] I64|I32 ids<D distinct", "[C, D, R2*K2, R3] T cont"),
        "view 2",
        nmse=0.0,
    ),
    "GET_ROWS_BACK": Draw("C=1..9 R=1..6 n=1..8", ("[C, n] F32|F16 rows", "[n] I32 cont ids<R"), "[C, R] F32"),
}
