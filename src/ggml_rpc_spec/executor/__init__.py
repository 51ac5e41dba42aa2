"""Graph execution on NumPy: GRAPH_COMPUTE / GRAPH_RECOMPUTE for the reference server."""

from .errors import ExecutionError
from .plan import GraphPlan, plan_graph
from .ops import KERNELS
from .registry import ExecContext
from .tensors import DequantCache

__all__ = ["DequantCache", "ExecContext", "ExecutionError", "GraphPlan", "KERNELS", "plan_graph"]
