"""Ops that build a tensor from others by position: repeat, concatenate, pad, roll, fill,
ranges, diagonals and triangles."""

SPECS = ()
