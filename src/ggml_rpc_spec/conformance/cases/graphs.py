"""§8: graphs.  Every op case of op_cases.py against its NumPy oracle, plus recompute,
stored-graph lifetime, the COMPUTE flag and multiple devices."""

from __future__ import annotations

from typing import Callable

import numpy as np
from construct import Container

from ggml_rpc_spec.protocol import RPC_TENSOR_DTYPE, Command, Graph
from ggml_rpc_spec.protocol.columns import GRAPH_CACHE_LIMIT, Graphs
from ggml_rpc_spec.client.graphs import GraphBuilder

from ..core import Check, Checks, Context, SHOULD, first_version, require
from .op_cases import CASES

checks = Checks()  # this module's cases (see conformance.cases)

C = Command
UIDS = first_version("graphs", Graphs.UID)  # the first version whose servers cache graphs by uid


def _run_case(ctx: Context, case, device: int | None = None) -> None:
    results, expected = case.run(ctx.client(), ctx.device if device is None else device)
    for index, (got, want) in enumerate(zip(results, expected, strict=True)):
        scale = max(1.0, float(np.abs(want).max()))
        bad = ~np.isclose(got, want, rtol=case.rtol, atol=case.atol * scale)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            require(False, f"output {index} within rtol {case.rtol}: {want[where]:.6g} at {where}",
                    f"{got[where]:.6g} ({int(bad.sum())} of {bad.size} elements off)")


def _runs(case) -> Callable[[Context], None]:
    return lambda ctx: _run_case(ctx, case)


for _case in CASES:
    checks.add(Check(f"op.{_case.op}.{_case.key}", _case.section, f"{_case.op} computes like ggml ({_case.key})",
                   _runs(_case), kind="op", ops=(_case.op,), since=_case.since))


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


# -- §8.3 graphs cached by uid ---------------------------------------------------------------------


def _scalings(ctx: Context, rpc, factors, device: int | None = None):
    """An input `a` on the device and one graph per factor f computing f*a into a tensor of its
    own: (builder, a, [(graph, output)])."""
    device = ctx.device if device is None else device
    g = GraphBuilder(rpc.profile, rpc.alloc_buffer(4096, device))
    a = g.input(np.arange(1, 5, dtype=np.float32), name="a")
    outputs = [g.scale(a, factor, name=f"times{factor:g}") for factor in factors]
    return g, a, [(g.graph([out]), out) for out in outputs]


def _recomputed(g, rpc, a, outputs, factors, fresh: float) -> list[bool]:
    """Which of `outputs` (f*a for each of `factors`) hold f times the `fresh` input."""
    return [bool(np.allclose(g.read(rpc, out).ravel(), factor * fresh * np.arange(1, 5)))
            for out, factor in zip(outputs, factors, strict=True)]


@checks.check("8.3", "GRAPH_RECOMPUTE of a uid runs that uid's graph and no other cached one", since=UIDS)
def recompute_by_uid(ctx: Context) -> None:
    rpc = ctx.client()
    factors = (2.0, 3.0, 5.0)
    g, a, graphs = _scalings(ctx, rpc, factors)
    g.upload(rpc)
    for uid, (graph, _) in zip((11, 12, 13), graphs, strict=True):
        rpc.graph_compute(graph, ctx.device, uid=uid)
    outputs = [out for _, out in graphs]
    for uid, fresh, want in ((12, 10.0, [False, True, False]), (11, 100.0, [True, False, False])):
        rpc.set_tensor(a, fresh * np.arange(1, 5, dtype=np.float32))
        rpc.graph_recompute(ctx.device, uid=uid)
        got = _recomputed(g, rpc, a, outputs, factors, fresh)
        require(got == want, f"after recomputing uid {uid}, fresh results in {want}", str(got))


@checks.check("8.3", f"a device's graph cache keeps {GRAPH_CACHE_LIMIT} graphs; the next one clears it and is "
              "kept", rule="graph-cache.keeps", since=UIDS)
def graph_cache_keeps(ctx: Context) -> None:
    rpc = ctx.client()
    factors = (2.0, 3.0, 5.0)
    g, a, ((first, out_first), (last, out_last), (next_one, out_next)) = _scalings(ctx, rpc, factors)
    g.upload(rpc)
    for uid in range(1, GRAPH_CACHE_LIMIT + 1):  # the first and the last graph differ from those between
        rpc.graph_compute(last if uid == GRAPH_CACHE_LIMIT else first, ctx.device, uid=uid)
    outputs = [out_first, out_last, out_next]
    for uid, fresh, want in ((1, 10.0, [True, False, False]), (GRAPH_CACHE_LIMIT, 100.0, [False, True, False])):
        rpc.set_tensor(a, fresh * np.arange(1, 5, dtype=np.float32))
        rpc.graph_recompute(ctx.device, uid=uid)
        got = _recomputed(g, rpc, a, outputs, factors, fresh)
        require(got == want, f"with {GRAPH_CACHE_LIMIT} graphs cached, recomputing uid {uid} gives fresh "
                f"results in {want}", str(got))
    rpc.graph_compute(next_one, ctx.device, uid=GRAPH_CACHE_LIMIT + 1)
    rpc.set_tensor(a, 1000.0 * np.arange(1, 5, dtype=np.float32))
    rpc.graph_recompute(ctx.device, uid=GRAPH_CACHE_LIMIT + 1)
    require(_recomputed(g, rpc, a, outputs, factors, 1000.0)[2], f"uid {GRAPH_CACHE_LIMIT + 1} kept after the "
            "cache was cleared for it", "not recomputed")


@checks.check("8.3", "the same uid names a graph of its own on each device", needs=(C.DEVICE_COUNT,), since=UIDS)
def uids_per_device(ctx: Context) -> None:
    rpc = ctx.client()
    if rpc.device_count() < 2:
        ctx.skip("the target has one device")
    uid, fresh = 7, 10.0
    built = [(factor, *_scalings(ctx, rpc, (factor,), device)) for device, factor in ((0, 2.0), (1, 3.0))]
    for device, (_, g, a, ((graph, _),)) in enumerate(built):
        g.upload(rpc)
        rpc.graph_compute(graph, device, uid=uid)
        rpc.set_tensor(a, fresh * np.arange(1, 5, dtype=np.float32))
    for device, want in ((1, [False, True]), (0, [True, True])):
        rpc.graph_recompute(device, uid=uid)
        got = [_recomputed(g, rpc, a, [out], [factor], fresh)[0] for factor, g, a, ((_, out),) in built]
        require(got == want, f"after recomputing uid {uid} on device {device}: fresh results on devices 0, 1: "
                f"{want}", str(got))


# -- §8.2 a tensor naming itself, §8.4 use_count ---------------------------------------------------


@checks.check("8.2", "a CPY naming itself (ggml_cast: src[1] is the result) is computed, not taken for a cycle",
              rule="graph.self-reference")
def self_cpy(ctx: Context) -> None:
    rpc = ctx.client()
    g = GraphBuilder(rpc.profile, rpc.alloc_buffer(4096, ctx.device))
    values = np.arange(-4, 4, dtype=np.float32) * np.float32(0.375)
    a = g.input(values, name="a")
    casts: list[Container] = []
    for kind, source in (("F16", a), ("F32", None)):
        cast = g.new(kind, a.ne, op="CPY", srcs=[source if source is not None else casts[-1]], name=f"cast_{kind}")
        cast.src[1] = cast.id  # as ggml_cast builds it
        casts.append(cast)
    half, back = g.run(rpc, casts, device=ctx.device)
    require(np.array_equal(half.ravel(), values.astype(np.float16)) and np.array_equal(back.ravel(), values),
            f"F32 -> F16 -> F32 of {values.tolist()}", f"{half.ravel().tolist()}, {back.ravel().tolist()}")


@checks.check("8.4", "a use_count that misstates a node's users changes no result", rule="exec.use-count",
              level=SHOULD)
def use_count_changes_nothing(ctx: Context) -> None:
    if ctx.profile.tensor != "use_count":
        ctx.skip(f"protocol {ctx.profile.name}'s rpc_tensor has no use_count")
    rpc = ctx.client()
    g = GraphBuilder(rpc.profile, rpc.alloc_buffer(4096, ctx.device))
    x = g.input(np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16), name="x")
    w = g.input(np.linspace(0.5, 1.5, 16, dtype=np.float32), name="w")
    normed = g.rms_norm(x, 1e-5, name="normed")
    scaled = g.mul(normed, w, name="scaled")  # an RMS_NORM then a MUL of it: what ggml's CPU fuses
    shifted = g.add(normed, w, name="shifted")  # a second user of normed
    normed.use_count, scaled.use_count, shifted.use_count = 1, 0, 0  # the truth is 2 for normed
    g.upload(rpc)
    rpc.set_tensor(normed, np.full(32, 1000.0, np.float32))  # what a skipped write would leave
    rpc.graph_compute(g.graph([normed, scaled, shifted]), ctx.device)
    rows = np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16)
    want = rows / np.sqrt((rows * rows).mean(axis=1, keepdims=True) + np.float32(1e-5))
    weights = np.linspace(0.5, 1.5, 16, dtype=np.float32)
    for label, tensor, expected in (("normed", normed, want), ("scaled", scaled, want * weights),
                                    ("shifted", shifted, want + weights)):
        got = g.read(rpc, tensor).reshape(2, 16)
        require(np.allclose(got, expected, rtol=1e-4, atol=1e-5), f"{label} as without the wrong use_count",
                f"{got.ravel()[:4].tolist()}...")
