"""Graph execution on NumPy (placeholder: view-only ops until the op kernels land)."""

from __future__ import annotations

from dataclasses import dataclass, field


class ExecutionError(Exception):
    """The graph asks for something this server cannot compute; the connection closes."""


@dataclass
class GraphPlan:
    steps: list = field(default_factory=list)
    handles: set = field(default_factory=set)

    def run(self) -> None:
        for step in self.steps:
            step()


NO_COMPUTE = {"NONE", "RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE"}


def plan_graph(session, graph) -> GraphPlan:
    plan = GraphPlan()
    ggml = session.profile.ggml
    for handle in set(int(h) for h in graph.tensors["buffer"]) - {0}:
        plan.handles.add(handle)
    index = {int(t): i for i, t in enumerate(graph.tensors["id"])}
    for node in graph.nodes:
        tensor = graph.tensors[index[int(node)]]
        name = ggml.op_name(int(tensor["op"]))
        if name not in NO_COMPUTE:
            kind = ggml.tensor_type(int(tensor["type"]))
            raise ExecutionError(f"op {name} (type {kind.name if kind else tensor['type']}) is not supported "
                                 f"by this server in protocol {session.profile.name}")
    return plan
