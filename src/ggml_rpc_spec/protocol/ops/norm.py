"""Normalisation of rows (and of groups of channels)."""

from .spec import Draw, OpSpec, Param, Source

_EPS = (Param(0, "eps", "f32", "added to the variance (mean square) before the square root", 0),)
_ROWS = (Source("a", "the rows"),)

SPECS = (
    OpSpec(
        name="NORM",
        sources=_ROWS,
        params=_EPS,
        types="F32",
        result="as a",
        semantics="each row minus its mean, divided by sqrt(variance + eps)",
    ),
    OpSpec(
        name="RMS_NORM",
        sources=_ROWS,
        params=_EPS,
        types="F32",
        result="as a",
        semantics="each row divided by sqrt(mean of squares + eps)",
    ),
    OpSpec(
        name="L2_NORM",
        sources=_ROWS,
        params=(Param(0, "eps", "f32", "lower bound of the norm the row is divided by", 0),),
        types="F32",
        result="as a",
        semantics="each row divided by max(sqrt(sum of squares), eps)",
    ),
    OpSpec(
        name="GROUP_NORM",
        sources=(Source("a", "the values [W, H, C, N]"),),
        params=(
            Param(
                0,
                "n_groups",
                "i32",
                "number of groups the C channels are split into, ceil(C / n_groups) "
                "channels each (the last group may be smaller)",
                1,
            ),
            Param(1, "eps", "f32", "added to the variance before the square root"),
        ),
        types="F32",
        result="as a",
        semantics="per sample (dim 3) and group of channels (dim 2): the values minus their mean, divided by "
        "sqrt(variance + eps)",
    ),
)

_ROW_DRAW = Draw("A0=1..9 A1=1..6 A2=1..3 A3=1..2", ("[A0, A1, A2, A3] F32 rows",), "[A0, A1, A2, A3] F32")

# How to draw a valid node of each op (differential fuzzing; see spec.Draw).
DRAWS = {
    "NORM": _ROW_DRAW,
    "RMS_NORM": _ROW_DRAW,
    "L2_NORM": _ROW_DRAW,
    "GROUP_NORM": Draw("W=1..6 H=1..4 C=1..6 N=1..2 n_groups=1..C eps=1e-6|1e-5|0.1", ("[W, H, C, N] F32 cont",),
                       "[W, H, C, N] F32"),
}
