"""Graph execution on NumPy: GRAPH_COMPUTE / GRAPH_RECOMPUTE for the reference server."""

from . import ops  # noqa: F401  (fills the registry)
from .errors import ExecutionError
from .plan import GraphPlan, plan_graph
from .registry import KERNELS, ExecContext
from .tensors import DequantCache

__all__ = ["DequantCache", "ExecContext", "ExecutionError", "GraphPlan", "KERNELS", "plan_graph"]
