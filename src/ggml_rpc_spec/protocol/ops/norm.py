"""Normalisation of rows (and of groups of channels)."""

from .spec import OpSpec, Param, Source

_EPS = (Param(0, "eps", "f32", "added to the variance (mean square) before the square root", 0),)
_ROWS = (Source("a", "the rows"),)

SPECS = (
    OpSpec("NORM", "norm", _ROWS, _EPS, "F32", "as a",
           "each row minus its mean, divided by sqrt(variance + eps)"),
    OpSpec("RMS_NORM", "norm", _ROWS, _EPS, "F32", "as a",
           "each row divided by sqrt(mean of squares + eps)"),
    OpSpec("L2_NORM", "norm", _ROWS,
           (Param(0, "eps", "f32", "lower bound of the norm the row is divided by", 0),),
           "F32", "as a", "each row divided by max(sqrt(sum of squares), eps)"),
    OpSpec("GROUP_NORM", "norm", (Source("a", "the values [W, H, C, N]"),),
           (Param(0, "n_groups", "i32", "number of groups the C channels are split into, ceil(C / n_groups) "
                  "channels each (the last group may be smaller)", 1),
            Param(1, "eps", "f32", "added to the variance before the square root")),
           "F32", "as a",
           "per sample (dim 3) and group of channels (dim 2): the values minus their mean, divided by "
           "sqrt(variance + eps)"),
)
