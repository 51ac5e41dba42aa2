"""From a decoded graph to a list of runnable steps (built once, run by every RECOMPUTE)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ExecutionError
from .kernels import KERNELS, ExecContext, Step
from .tensors import TensorRef


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
        with np.errstate(all="ignore"):  # overflow, 0/0 and the like give inf/nan, as in C
            for _, step in self.steps:
                step()


def bind_tensors(graph, buffers: dict, profile) -> dict[int, TensorRef]:
    """TensorRef per tensor id, with sources linked.  The graph passed protocol.rules.

    Columns are pulled out of the structured array once (`tolist`), not field by field per
    row, and TensorRefs are built positionally (in field order): graphs of thousands of
    tensors arrive with every decode."""
    ggml = profile.ggml
    tensors = graph.tensors
    kinds = {value: ggml.tensor_type(value) for value in set(tensors["type"].tolist())}
    ops = {value: ggml.op_name(value) for value in set(tensors["op"].tolist())}
    params = np.ascontiguousarray(tensors["op_params"], dtype=np.int32)
    columns = zip(tensors["id"].tolist(), tensors["type"].tolist(), tensors["ne"].tolist(), tensors["nb"].tolist(),
                  tensors["data"].tolist(), tensors["buffer"].tolist(), tensors["op"].tolist(), params,
                  tensors["name"].tolist(), tensors["flags"].tolist())
    bound = [TensorRef(tid, kinds[kind], tuple(ne), tuple(nb), data, buffers.get(handle) if handle else None, ops[op],
                       op_params, name, flags)
             for tid, kind, ne, nb, data, handle, op, op_params, name, flags in columns]
    refs = {ref.id: ref for ref in bound}
    links = tensors["src"]
    widths = np.where(links != 0, np.arange(1, links.shape[1] + 1), 0).max(axis=1)  # up to the last source used
    for ref, srcs, width, view_src in zip(bound, links.tolist(), widths.tolist(), tensors["view_src"].tolist()):
        if width:
            ref.srcs = [refs.get(s) if s else None for s in srcs[:width]]
        if view_src:
            ref.view_src = refs.get(view_src)
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
