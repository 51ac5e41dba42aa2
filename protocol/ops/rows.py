"""Row gathers and scatters by index tensors."""

from . import OpSpec, Source

SPECS = (
    OpSpec("GET_ROWS", "rows",
           (Source("a", "the table [C, R, a2, a3]"), Source("rows", "I32 row indices [n, a2, a3]")),
           (), "a any readable type, rows I32, result F32 (I32 for an I32 table)", "[C, n, a2, a3]",
           "result[i3, i2, i, :] = a[i3, i2, rows[i3, i2, i], :]; every index MUST be in [0, R)"),
    OpSpec("SET_ROWS", "rows",
           (Source("a", "the new rows [C, n, a2, a3]"), Source("rows", "I64 or I32 destination rows [n, r2, r3]"),
            Source("dst", "the destination (the result is a view of it)")),
           (), "a F32, rows I32/I64, result any type the CPU can write", "as dst",
           "dst[i3, i2, rows[i3 % r3, i2 % r2, i], :] = a[i3, i2, i, :]; every index MUST be in [0, dst rows)"),
)
