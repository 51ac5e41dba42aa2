"""Ops that build a tensor from others by position: REPEAT, CONCAT, PAD, ROLL, FILL, ARANGE, DIAG, TRI, ..."""
