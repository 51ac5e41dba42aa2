"""Views and leaves: nodes that name memory and compute nothing."""

from __future__ import annotations

import numpy as np

from ggml_rpc_spec.protocol.ops import CATALOGUE

from ..registry import ExecContext, Taken, batch_kernel, kernel
from ..tensors import TensorRef

NO_COMPUTE = tuple(name for name, spec in CATALOGUE.items() if not spec.computes)


@kernel(*NO_COMPUTE, reads=frozenset(), source_reads=frozenset())
def build_no_compute(node: TensorRef, ctx: ExecContext) -> None:
    return None


@batch_kernel(*NO_COMPUTE)
def batch_no_compute(binder, op: str, rows: np.ndarray, ctx: ExecContext) -> Taken:
    return np.arange(len(rows)), [None] * len(rows)
