"""Views and leaves: nodes that name memory and compute nothing."""

from __future__ import annotations

import numpy as np

from ggml_rpc_spec.protocol.ops import CATALOGUE

from ..registry import ExecContext, Kernels, Taken
from ..tensors import TensorRef

kernels = Kernels()  # this family's kernels (see executor.ops)

NO_COMPUTE = tuple(name for name, spec in CATALOGUE.items() if not spec.computes)


@kernels.kernel(*NO_COMPUTE, reads=frozenset(), source_reads=frozenset())
def build_no_compute(node: TensorRef, ctx: ExecContext) -> None:
    return None


@kernels.batch(*NO_COMPUTE)
def batch_no_compute(binder, op: str, rows: np.ndarray, ctx: ExecContext) -> Taken:
    return np.arange(len(rows)), [None] * len(rows)
