"""Normalisation of rows."""

from . import OpSpec, Param, Source

_EPS = (Param(0, "eps", "f32", "added to the variance (mean square) before the square root", 0),)

SPECS = (
    OpSpec("NORM", "norm", (Source("a", "the rows"),), _EPS, "F32", "as a",
           "each row minus its mean, divided by sqrt(variance + eps)"),
    OpSpec("RMS_NORM", "norm", (Source("a", "the rows"),), _EPS, "F32", "as a",
           "each row divided by sqrt(mean of squares + eps)"),
)
