"""Normalisation of rows (and of groups of channels)."""

from .spec import OpSpec, Param, Source

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
