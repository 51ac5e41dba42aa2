"""From a decoded graph to a list of runnable steps (built once, run by every RECOMPUTE).

Building a step costs microseconds of Python per node, and a client sends a new graph of
a thousand nodes or more for every token, mostly the nodes of the last one.  A plan takes
over from the device's previous plan every step whose step key (stepkeys.py) it finds,
and builds (and checks) only the rest.  Steps are taken only from the device's previous
plan, which is discarded with any buffer it reaches, so a reused step never outlives the
memory it was built on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ggml_rpc_spec.protocol.graph import distinct

from .binder import Binder
from .errors import ExecutionError
from .ops import BATCHED, KERNELS
from .registry import Call, ExecContext, Step
from .stepkeys import StepKeys
from .tensors import TensorRef

UNBUILT = object()  # a node whose step is not taken over from the previous plan


@dataclass
class GraphPlan:
    ctx: ExecContext  # its memo is the steps' per-run scratch
    handles: set[int]  # every buffer the graph reaches
    steps: list[Call]
    written: list  # buffers its nodes write
    keys: StepKeys  # for the next plan to take steps over: the key of each node
    node_steps: list  # and its call (None: nothing to run)

    def run(self) -> None:
        for buffer in self.written:
            buffer.touched()  # retire cached dequantized copies of what the graph overwrites
        self.ctx.memo.clear()
        with np.errstate(all="ignore"):  # overflow, 0/0 and the like give inf/nan, as in C
            for function, arguments in self.steps:
                function(*arguments)


def plan_graph(graph, buffers: dict, profile, ctx: ExecContext, previous: GraphPlan | None = None) -> GraphPlan:
    """Validate every node against its kernel and prepare the steps; nothing runs yet.
    Steps of `previous` (the device's last plan) are taken over where the key matches."""
    tensors = graph.tensors
    rows = graph.node_rows  # the graph passed protocol.rules: every node is there
    compute_flag = profile.ggml.compute_flag
    if compute_flag:  # ggml's CPU backend runs only nodes marked COMPUTE (§8.4)
        rows = rows[(tensors["flags"][rows] & compute_flag) != 0]
    keys = StepKeys(graph, rows)
    if previous is not None:
        found = keys.find_in(previous.keys)
        steps = list(map([*previous.node_steps, UNBUILT].__getitem__, found.tolist()))  # -1: UNBUILT
    else:
        found, steps = np.full(len(rows), -1), [UNBUILT] * len(rows)
    todo = np.flatnonzero(found < 0)
    if len(todo):
        build_steps(Binder(graph, buffers, profile.ggml), rows, todo, steps, ctx, profile)
    written = {handle for handle, step in zip(tensors["buffer"][rows].tolist(), steps) if step is not None}
    return GraphPlan(ctx, {int(h) for h in distinct(tensors["buffer"]) if h}, [s for s in steps if s is not None],
                     [buffers[handle] for handle in written], keys, steps)


def build_steps(binder: Binder, rows: np.ndarray, todo: np.ndarray, steps: list, ctx: ExecContext, profile) -> None:
    """Build steps[i] (the step of node row rows[i]) for each i in `todo`: batch kernels
    first, each taking what it can of those nodes of its op at once; the other nodes go to
    the op's kernel one at a time, in order."""
    pending = np.zeros(len(rows), bool)
    pending[todo] = True
    ops = binder.tensors["op"][rows[todo]]
    for value in distinct(ops).tolist():
        op = binder.ggml.op_name(value)
        batch = BATCHED.get(op)
        if batch is not None:
            at = todo[ops == value]
            taken, made = batch(binder, op, rows[at], ctx)
            at = at[taken]
            pending[at] = False
            for i, step in zip(at.tolist(), made):
                steps[i] = step
    for i, row in zip(np.flatnonzero(pending).tolist(), rows[pending].tolist()):
        step = _build(binder.node(row), ctx, profile)
        steps[i] = None if step is None else (step, ())


def _build(node: TensorRef, ctx: ExecContext, profile) -> Step | None:
    entry = KERNELS.get(node.op)
    if entry is None:
        raise ExecutionError(f"op {node.op} (node {node.name!r}, type {node.kind.name}) is not supported by this "
                             f"server in protocol {profile.name}")
    step = entry.build(node, ctx)
    if step is not None and node.buffer is None:
        raise ExecutionError(f"{node.label} node {node.name!r} has no buffer on this server to write to")
    return step
