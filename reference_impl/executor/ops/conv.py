"""Convolution, pooling and image resampling."""
