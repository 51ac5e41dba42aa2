"""Gradients, losses and optimizer steps."""

SPECS = ()
