"""From a decoded graph to a list of runnable steps (built once, run by every RECOMPUTE).

Building a step costs microseconds of Python per node, and a client sends a new graph of
a thousand nodes or more for every token.  Consecutive graphs are mostly the same nodes,
so a plan keeps its steps under a *step key*: the bytes that decide what a step does —
the node's own fields (type, buffer, shape, strides, op, op_params, flags, data, name) and
the memory fields of each source (type, buffer, shape, strides, data).  Tensor ids, source
ids and view links are left out: they name tensors, they do not change the work.  The next
plan on the device takes over every step whose key it finds, and builds (and checks) only
the rest.  Steps are taken only from the device's previous plan, which is discarded with
any buffer it reaches, so a reused step never outlives the memory it was built on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .binder import Binder
from .errors import ExecutionError
from .kernels import BATCHED, KERNELS, PER_NODE, ExecContext, Step
from .tensors import TensorRef

NODE_KEY_FIELDS = ("type", "buffer", "ne", "nb", "op", "op_params", "flags", "data", "name")
SOURCE_KEY_FIELDS = ("type", "buffer", "ne", "nb", "data")

UNBUILT = object()  # a node whose step is not taken over from the previous plan


@dataclass
class GraphPlan:
    ctx: ExecContext  # its memo is the steps' per-run scratch
    handles: set[int]  # every buffer the graph reaches
    steps: list[Step] = field(default_factory=list)
    written: list = field(default_factory=list)  # buffers its nodes write
    by_key: dict[bytes, Step | None] = field(default_factory=dict)  # steps for the next plan to take over

    def run(self) -> None:
        for buffer in self.written:
            buffer.touched()  # retire cached dequantized copies of what the graph overwrites
        self.ctx.memo.clear()
        with np.errstate(all="ignore"):  # overflow, 0/0 and the like give inf/nan, as in C
            for step in self.steps:
                step()


@lru_cache
def _byte_spans(dtype: np.dtype, names: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """(start, end) byte ranges of the named fields within one record, adjacent ones merged."""
    spans: list[list[int]] = []
    for start, end in sorted((dtype.fields[n][1], dtype.fields[n][1] + dtype.fields[n][0].itemsize) for n in names):
        if spans and spans[-1][1] == start:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return tuple((start, end) for start, end in spans)


def _gather(raw: np.ndarray, rows: np.ndarray, spans, out: np.ndarray) -> None:
    """out[i] = the bytes of `spans` of record rows[i] (zeros where rows[i] is -1)."""
    at = 0
    for start, end in spans:
        out[:, at : at + end - start] = raw[rows, start:end]
        at += end - start
    out[rows < 0] = 0


def step_keys(graph, rows: np.ndarray) -> list[bytes]:
    """The step key (module docstring) of each row in `rows`, computed for all at once."""
    tensors = np.ascontiguousarray(graph.tensors)
    raw = tensors.view(np.uint8).reshape(len(tensors), tensors.dtype.itemsize)
    links = tensors["src"][rows]
    used = int(np.flatnonzero(links.any(axis=0)).max(initial=-1)) + 1  # source slots any node uses
    src_rows = graph.link_rows[rows, :used]
    own, memory = _byte_spans(tensors.dtype, NODE_KEY_FIELDS), _byte_spans(tensors.dtype, SOURCE_KEY_FIELDS)
    own_size, memory_size = sum(e - s for s, e in own), sum(e - s for s, e in memory)
    keys = np.empty((len(rows), own_size + used * memory_size), np.uint8)
    _gather(raw, rows, own, keys[:, :own_size])
    for slot in range(used):
        at = own_size + slot * memory_size
        _gather(raw, src_rows[:, slot], memory, keys[:, at : at + memory_size])
    return keys.view(f"V{keys.shape[1]}").ravel().tolist()


def plan_graph(graph, buffers: dict, profile, ctx: ExecContext, previous: GraphPlan | None = None) -> GraphPlan:
    """Validate every node against its kernel and prepare the steps; nothing runs yet.
    Steps of `previous` (the device's last plan) are taken over where the key matches."""
    tensors = graph.tensors
    rows = graph.node_rows  # the graph passed protocol.rules: every node is there
    compute_flag = profile.ggml.compute_flag
    if compute_flag:  # ggml's CPU backend runs only nodes marked COMPUTE (§8.4)
        rows = rows[(tensors["flags"][rows] & compute_flag) != 0]
    keys = step_keys(graph, rows)
    known = previous.by_key if previous is not None else {}
    steps = [known.get(key, UNBUILT) for key in keys]
    todo = [i for i, step in enumerate(steps) if step is UNBUILT]
    if todo:
        built = build_steps(Binder(graph, buffers, profile.ggml), rows[todo], ctx, profile)
        for i, step in zip(todo, built):
            steps[i] = step
    written = {handle for handle, step in zip(tensors["buffer"][rows].tolist(), steps) if step is not None}
    return GraphPlan(ctx, {int(h) for h in np.unique(tensors["buffer"]) if h}, [s for s in steps if s is not None],
                     [buffers[handle] for handle in written], dict(zip(keys, steps)))


def build_steps(binder: Binder, rows: np.ndarray, ctx: ExecContext, profile) -> list[Step | None]:
    """The step of each node row: batch kernels first, each taking all nodes of its op at
    once; the nodes they leave (PER_NODE) go to the op's kernel one at a time, in order."""
    steps: list = [PER_NODE] * len(rows)
    ops = binder.tensors["op"][rows]
    for value in np.unique(ops).tolist():
        op = binder.ggml.op_name(value)
        batch = BATCHED.get(op)
        if batch is not None:
            at = np.flatnonzero(ops == value)
            for i, step in zip(at.tolist(), batch(binder, op, rows[at], ctx)):
                steps[i] = step
    for i, row in enumerate(rows.tolist()):
        if steps[i] is PER_NODE:
            steps[i] = _build(binder.node(row), ctx, profile)
    return steps


def _build(node: TensorRef, ctx: ExecContext, profile) -> Step | None:
    build = KERNELS.get(node.op)
    if build is None:
        raise ExecutionError(f"op {node.op} (node {node.name!r}, type {node.kind.name}) is not supported by this "
                             f"server in protocol {profile.name}")
    step = build(node, ctx)
    if step is not None and node.buffer is None:
        raise ExecutionError(f"{node.op} node {node.name!r} has no buffer on this server to write to")
    return step
