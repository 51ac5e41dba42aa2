"""Batch kernels' shared machinery: which nodes of an op can run as one ufunc call over
plain float32 views, and the steps that make that call (used by the elementwise family)."""

from __future__ import annotations

import itertools
import numpy as np

from ggml_rpc_spec.protocol.ggml import TYPE_BY_NAME

from .registry import Call, Taken


def plain_f32(binder, rows: np.ndarray, *operands: np.ndarray) -> np.ndarray:
    """Which nodes (`rows`) and their operand rows are all float32, present and in a buffer:
    the nodes a batch kernel can run on plain views.  (A tensor without a buffer has no
    memory here; the per-node kernel reports it.)"""
    f32 = TYPE_BY_NAME["F32"].value
    ok = (binder.types[rows] == f32) & (binder.handles[rows] != 0)
    for operand in operands:
        ok &= (operand >= 0) & (binder.types[operand] == f32) & (binder.handles[operand] != 0)
    return ok


def ufunc_steps(binder, function, rows: np.ndarray, ok: np.ndarray, flat: np.ndarray, sources,
                scalars: np.ndarray | None = None) -> Taken:
    """Calls `function(*sources, [scalar,] out)` for the nodes `ok` (a batch kernel's answer):
    over 1-D slices where `flat` (every operand packed, all of one shape), otherwise over
    strided views, where the ufunc broadcasts a source of size 1 as ggml repeats it."""
    taken: list[np.ndarray] = []
    calls: list[Call] = []
    for mask, views in ((flat, binder.flat), (ok & ~flat, binder.views)):
        at = np.flatnonzero(mask)
        columns = views(*(source[at] for source in sources), rows[at])
        if scalars is not None:
            columns.insert(-1, scalars[at])
        taken.append(at)
        calls += zip(itertools.repeat(function), zip(*columns))  # `out` positional: the cheaper call
    return np.concatenate(taken), calls
