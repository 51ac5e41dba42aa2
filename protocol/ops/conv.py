"""Convolution, pooling and image resampling."""

SPECS = ()
