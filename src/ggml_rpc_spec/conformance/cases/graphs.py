"""§8: graphs.  Every op case of op_cases.py against its NumPy oracle, plus recompute,
stored-graph lifetime, the COMPUTE flag and multiple devices."""

from __future__ import annotations

import numpy as np

from ggml_rpc_spec.protocol import RPC_TENSOR_DTYPE, Command, Graph
from ggml_rpc_spec.client.graphs import GraphBuilder

from ..core import Check, Checks, Context, SHOULD, require
from .op_cases import CASES

checks = Checks()  # this module's cases (see conformance.cases)

C = Command


def _run_case(ctx: Context, case, device: int | None = None) -> None:
    results, expected = case.run(ctx.client(), ctx.device if device is None else device)
    for index, (got, want) in enumerate(zip(results, expected, strict=True)):
        scale = max(1.0, float(np.abs(want).max()))
        bad = ~np.isclose(got, want, rtol=case.rtol, atol=case.atol * scale)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            require(False, f"output {index} within rtol {case.rtol}: {want[where]:.6g} at {where}",
                    f"{got[where]:.6g} ({int(bad.sum())} of {bad.size} elements off)")


for _case in CASES:
    checks.add(Check(f"op.{_case.op}.{_case.key}", _case.section, f"{_case.op} computes like ggml ({_case.key})",
                   lambda ctx, case=_case: _run_case(ctx, case), kind="op", ops=(_case.op,), since=_case.since))


def _add_graph(ctx: Context, rpc, values_a, values_b):
    buf = rpc.alloc_buffer(4096, ctx.device)
    g = GraphBuilder(rpc.profile, buf)
    a = g.input(values_a)
    return g, a, g.add(a, g.input(values_b))


@checks.check("8.1", "a graph without nodes or tensors is computed (nothing to do)")
def empty_graph(ctx: Context) -> None:
    rpc = ctx.client()
    empty = Graph(np.zeros(0, "<u8"), np.zeros(0, RPC_TENSOR_DTYPE[ctx.profile.tensor]))
    result = rpc.graph_compute(empty, ctx.device)
    require(result in (None, 0), "no reply (3.0 and later) or status 0", str(result))
    require(rpc.alignment() > 0, "the connection still answers", "no answer")


@checks.check("8.3", "GRAPH_RECOMPUTE runs the stored graph again on fresh inputs", needs=(C.GRAPH_RECOMPUTE,))
def recompute(ctx: Context) -> None:
    rpc = ctx.client()
    x, y = np.arange(8, dtype=np.float32), np.ones(8, dtype=np.float32)
    g, a, out = _add_graph(ctx, rpc, x, y)
    first = g.run(rpc, [out], device=ctx.device)[0]
    rpc.set_tensor(a, x * 10)
    rpc.graph_recompute(ctx.device)
    second = g.read(rpc, out)
    require(np.allclose(first.ravel(), x + y) and np.allclose(second.ravel(), x * 10 + y),
            "x+1 then 10x+1", f"{first.ravel()} then {second.ravel()}")


@checks.check("8.3", "a new GRAPH_COMPUTE replaces the stored graph", needs=(C.GRAPH_RECOMPUTE,))
def recompute_latest(ctx: Context) -> None:
    rpc = ctx.client()
    g, a, out = _add_graph(ctx, rpc, np.zeros(4, np.float32), np.ones(4, np.float32))
    g.run(rpc, [out], device=ctx.device)
    scaled = g.scale(a, 3.0)
    g.run(rpc, [scaled], device=ctx.device)
    rpc.set_tensor(a, np.full(4, 2, np.float32))
    rpc.graph_recompute(ctx.device)
    got = g.read(rpc, scaled).ravel()
    require(np.allclose(got, 6.0), "the latest graph (3*a) recomputed", str(got))


@checks.check("8.4", "nodes without the COMPUTE flag are skipped", level=SHOULD)
def compute_flag(ctx: Context) -> None:
    if not ctx.profile.ggml.compute_flag:
        ctx.skip(f"ggml {ctx.profile.ggml.release} computes every node (no COMPUTE flag)")
    rpc = ctx.client()
    g, a, out = _add_graph(ctx, rpc, np.ones(4, np.float32), np.ones(4, np.float32))
    rpc.set_tensor(out, np.full(4, -1, np.float32))
    out.flags = 0
    g.run(rpc, [], nodes=[out], device=ctx.device)
    got = g.read(rpc, out).ravel()
    require(np.allclose(got, -1.0), "the unflagged node left untouched (-1)", str(got))


@checks.check("8.1", "graphs run on every device", needs=(C.DEVICE_COUNT,))
def every_device(ctx: Context) -> None:
    count = ctx.client().device_count()
    add = next(case for case in CASES if case.op == "ADD")
    for device in range(count):
        _run_case(ctx, add, device=device)
