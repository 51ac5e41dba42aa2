"""From a decoded graph to a list of runnable steps (built once, run by every RECOMPUTE)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ExecutionError
from .kernels import KERNELS, ExecContext, Step
from .tensors import TensorRef, tensor_name


@dataclass
class GraphPlan:
    steps: list[tuple[str, Step]] = field(default_factory=list)
    handles: set[int] = field(default_factory=set)  # every buffer the graph reaches
    written: list = field(default_factory=list)  # buffers its nodes write
    memo: dict = field(default_factory=dict)  # the context's per-run scratch

    def run(self) -> None:
        for buffer in self.written:
            buffer.touched()  # retire cached dequantized copies of what the graph overwrites
        self.memo.clear()
        for _, step in self.steps:
            step()


def bind_tensors(graph, buffers: dict, profile) -> dict[int, TensorRef]:
    """TensorRef per tensor id, with sources linked.  The graph passed protocol.rules."""
    ggml = profile.ggml
    tensors = graph.tensors
    refs: dict[int, TensorRef] = {}
    for row in tensors:
        kind = ggml.tensor_type(int(row["type"]))
        handle = int(row["buffer"])
        refs[int(row["id"])] = TensorRef(
            id=int(row["id"]), kind=kind, ne=tuple(int(n) for n in row["ne"]), nb=tuple(int(n) for n in row["nb"]),
            data=int(row["data"]), buffer=buffers.get(handle) if handle else None,
            op=ggml.op_name(int(row["op"])), op_params=np.array(row["op_params"], dtype=np.int32),
            name=tensor_name(row["name"]), flags=int(row["flags"]))
    for row in tensors:
        ref = refs[int(row["id"])]
        ref.srcs = [refs.get(int(s)) if s else None for s in row["src"]]
        while ref.srcs and ref.srcs[-1] is None:
            ref.srcs.pop()
        ref.view_src = refs.get(int(row["view_src"])) if row["view_src"] else None
    return refs


def plan_graph(graph, buffers: dict, profile, ctx: ExecContext) -> GraphPlan:
    """Validate every node against its kernel and prepare the steps; nothing runs yet."""
    refs = bind_tensors(graph, buffers, profile)
    plan = GraphPlan(handles={int(h) for h in np.unique(graph.tensors["buffer"]) if h}, memo=ctx.memo)
    written = {}
    compute_flag = profile.ggml.compute_flag
    for node_id in graph.nodes.tolist():
        node = refs[node_id]
        if compute_flag and not node.flags & compute_flag:
            continue  # ggml's CPU backend runs only nodes marked COMPUTE (§8.4)
        build = KERNELS.get(node.op)
        if build is None:
            raise ExecutionError(f"op {node.op} (node {node.name!r}, type {node.kind.name}) is not supported by this "
                                 f"server in protocol {profile.name}")
        step = build(node, ctx)
        if step is not None:
            if node.buffer is None:
                raise ExecutionError(f"{node.op} node {node.name!r} has no buffer on this server to write to")
            plan.steps.append((node.op, step))
            written[node.buffer.handle] = node.buffer
    plan.written = list(written.values())
    return plan
