"""Differential graph fuzzing: random valid graphs computed by the target and by an oracle.

Each example draws a small graph of ops from the catalogue with random shapes, types,
strides (permuted views) and op_params within their valid ranges, builds it on the target
and on the oracle server (`--oracle HOST:PORT`, e.g. the real upstream server; by default
the reference server, started locally when the target is another server) with the same
inputs, computes it on both and compares every output with the error measure and bound of
upstream's op test program: the normalised mean squared error (NMSE) against its per-op
maximum (0 for copies, integer results and indices).  A mismatch is saved as two trace
files, the target's exchange and the oracle's.  Fixed op cases (op_cases.py, upstream's
test-backend-ops) pin known cases; this finds the combinations they miss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ggml_rpc_spec.client.graphs import ROPE_NEOX, ROPE_NORMAL, GraphBuilder

from ..core import Checks, Context

checks = Checks()  # this module's cases (see conformance.cases)

# The bounds of test-backend-ops (its max_nmse_err) for the ops generated here.
DEFAULT, MATMUL, SOFT_MAX, EXACT = 1e-7, 5e-4, 1e-6, 0.0


@dataclass
class Built:
    """A graph built on one server: its outputs and the NMSE bound each is held to."""

    outputs: list
    bounds: list[float]


Recipe = Callable[[GraphBuilder], Built]  # builds the drawn graph on a server


def _values(draw, shape, *, scale: float = 1.0, positive: bool = False) -> np.ndarray:
    values = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)
    values = (values * scale).astype(np.float32)
    return np.abs(values) + np.float32(0.1) if positive else values


def _shape(draw, *, dims: int | None = None, hi: int = 9) -> tuple[int, ...]:
    dims = dims or draw(st.integers(1, 4))
    return tuple(draw(st.integers(1, hi)) for _ in range(dims))


def _axes(draw, dims: int) -> tuple[int, ...] | None:
    return tuple(draw(st.permutations(range(4)))) if dims >= 2 and draw(st.booleans()) else None


def _source(g: GraphBuilder, values: np.ndarray, axes):
    x = g.input(values)
    return g.permute(x, *axes) if axes else x


def unary(draw) -> tuple[str, Recipe]:
    kind = draw(st.sampled_from(["ABS", "SGN", "NEG", "STEP", "TANH", "ELU", "RELU", "SIGMOID", "GELU", "GELU_QUICK",
                                 "SILU", "HARDSWISH", "HARDSIGMOID", "EXP", "GELU_ERF", "FLOOR", "CEIL", "ROUND"]))
    values = _values(draw, _shape(draw), scale=draw(st.sampled_from([0.5, 2.0, 8.0])))
    return f"UNARY({kind})", lambda g: Built([g.unary(g.input(values), kind)], [DEFAULT])


def binary(draw) -> tuple[str, Recipe]:
    op = draw(st.sampled_from(["ADD", "SUB", "MUL", "DIV"]))
    shape = _shape(draw, dims=4)
    a, b = _values(draw, shape), _values(draw, tuple(draw(st.sampled_from([1, n])) for n in shape), positive=op == "DIV")
    return op, lambda g: Built([g.binary(op, g.input(a), g.input(b))], [DEFAULT])


def scale_chain(draw) -> tuple[str, Recipe]:
    values = _values(draw, _shape(draw), positive=True)
    s, b = draw(st.floats(-4, 4, width=32)), draw(st.floats(-1, 1, width=32))

    def build(g):
        y = g.scale(g.input(values), s, b)
        return Built([y, g.sqrt(g.sqr(y))], [DEFAULT, DEFAULT])

    return "SCALE/SQR/SQRT", build


def norm(draw) -> tuple[str, Recipe]:
    values, axes = _values(draw, _shape(draw, dims=3, hi=40), scale=3.0), None
    eps, rms = draw(st.sampled_from([1e-6, 1e-5, 1e-3])), draw(st.booleans())
    return ("RMS_NORM" if rms else "NORM"), lambda g: Built(
        [(g.rms_norm if rms else g.norm)(_source(g, values, axes), eps)], [DEFAULT])


def reduce(draw) -> tuple[str, Recipe]:
    which = draw(st.sampled_from(["SUM_ROWS", "MEAN", "ARGMAX"]))
    values = _values(draw, _shape(draw, dims=2 if which == "ARGMAX" else 3, hi=30))
    if which == "ARGMAX":
        return which, lambda g: Built([g.argmax(g.input(values))], [EXACT])
    return which, lambda g: Built([(g.sum_rows if which == "SUM_ROWS" else g.mean)(g.input(values))], [DEFAULT])


def soft_max(draw) -> tuple[str, Recipe]:
    heads, rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(2, 40))
    values = _values(draw, (heads, rows, cols), scale=3.0)
    mask = None
    if draw(st.booleans()):
        mask = np.where(np.triu(np.ones((rows, cols), bool), k=1), -np.inf, 0).astype(np.float32)
        if draw(st.booleans()):
            mask = mask.astype(np.float16)
    scale = draw(st.sampled_from([1.0, 0.125, 0.3]))
    max_bias = draw(st.sampled_from([0.0, 0.0, 8.0])) if mask is not None else 0.0
    return "SOFT_MAX", lambda g: Built([g.soft_max(g.input(values), g.input(mask) if mask is not None else None,
                                                   scale=scale, max_bias=max_bias)], [SOFT_MAX])


def rope(draw) -> tuple[str, Recipe]:
    dims, tokens, heads = draw(st.sampled_from([8, 16, 32])), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    values = _values(draw, (tokens, heads, dims))
    positions = np.array(draw(st.lists(st.integers(0, 4096), min_size=tokens, max_size=tokens)), np.int32)
    mode, n_dims = draw(st.sampled_from([ROPE_NORMAL, ROPE_NEOX])), draw(st.sampled_from([dims, dims // 2]))
    base, scale = draw(st.sampled_from([10000.0, 500000.0])), draw(st.sampled_from([1.0, 0.25]))
    return "ROPE", lambda g: Built([g.rope(g.input(values), g.input(positions), n_dims, mode, freq_base=base,
                                           freq_scale=scale)], [DEFAULT * 10])


def mul_mat(draw) -> tuple[str, Recipe]:
    from .op_cases import quantized_weights

    kind = draw(st.sampled_from(["F32", "F16", "Q4_0", "Q8_0", "Q4_K"]))
    k = 256 if kind.endswith("_K") else 32 * draw(st.integers(1, 4))
    # at least 16 outputs, as in the program's own cases: over fewer, NMSE measures the noise of
    # ggml rounding activations to 8 bits on a sum near zero rather than the product
    n, m = draw(st.integers(4, 12)), draw(st.integers(4, 9))
    raw, _ = quantized_weights(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), kind, n, k)
    x = _values(draw, (m, k))
    return f"MUL_MAT({kind})", lambda g: Built([g.mul_mat(g.input_raw(kind, [k, n], raw), g.input(x))], [MATMUL])


def get_rows(draw) -> tuple[str, Recipe]:
    rows, cols = draw(st.integers(1, 12)), 32 * draw(st.integers(1, 3))
    table = _values(draw, (rows, cols))
    index = np.array(draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=8)), np.int32)
    return "GET_ROWS", lambda g: Built([g.get_rows(g.input(table), g.input(index))], [EXACT])


def copy(draw) -> tuple[str, Recipe]:
    shape = _shape(draw, dims=2, hi=12)
    values, axes, kind = _values(draw, shape), _axes(draw, 2), draw(st.sampled_from(["F32", "F16"]))

    def build(g):
        src = _source(g, values, axes)
        return Built([g.cpy(src, g.new(kind, src.ne)), g.cont(src)], [EXACT if kind == "F32" else 1e-6, EXACT])

    return f"CPY->{kind}", build


def glu(draw) -> tuple[str, Recipe]:
    kind, swapped = draw(st.sampled_from(["SWIGLU", "REGLU", "GEGLU"])), draw(st.booleans())
    values = _values(draw, (draw(st.integers(1, 4)), 2 * draw(st.integers(1, 20))))
    return f"GLU({kind})", lambda g: Built([g.glu(g.input(values), kind, swapped=swapped)], [DEFAULT * 10])


GENERATORS: tuple[Callable, ...] = (unary, binary, scale_chain, norm, reduce, soft_max, rope, mul_mat, get_rows,
                                    copy, glu)


def nmse(got: np.ndarray, want: np.ndarray) -> float:
    """test-backend-ops' error measure: squared differences over squares, summed."""
    got, want = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    if np.array_equal(got, want, equal_nan=True):
        return 0.0
    if np.isnan(got).any() or np.isnan(want).any():
        return float("inf")
    scale = float((want ** 2).sum())
    return float(((got - want) ** 2).sum() / scale) if scale else float("inf")


def compute(ctx: Context, endpoint: str, recipe: Recipe):
    """Build the recipe on a fresh connection to `endpoint` and compute it: (results, bounds,
    the exchange)."""
    from ggml_rpc_spec.client.rpc import RPCClient

    from ..probe import Transcript

    exchange = Transcript()
    with RPCClient(endpoint, proto=ctx.profile, timeout=ctx.timeout, tap=exchange.add) as rpc:
        g = GraphBuilder(rpc.profile, rpc.alloc_buffer(1 << 20))
        built = recipe(g)
        return g.run(rpc, built.outputs, nodes=g.ops()), built.bounds, exchange


@checks.check("8.5", "random valid graphs compute as the oracle server computes them", kind="fuzz")
def differential(ctx: Context) -> None:
    run = ctx.run
    oracle = run.oracle_endpoint()
    if oracle is None:
        ctx.skip("no oracle: give --oracle HOST:PORT (the target is the suite's own reference server)")

    @settings(max_examples=ctx.fuzz_examples, deadline=None, database=None,
              phases=[Phase.generate] if ctx.live_fuzz else list(Phase), suppress_health_check=list(HealthCheck))
    @given(st.data())
    def example(data):
        label, recipe = data.draw(st.sampled_from(GENERATORS), label="op")(data.draw)
        ours, bounds, ours_exchange = compute(ctx, ctx.endpoint, recipe)
        theirs, _, oracle_exchange = compute(ctx, oracle, recipe)
        for i, (got, want, bound) in enumerate(zip(ours, theirs, bounds, strict=True)):
            error = nmse(got, want)
            if error > bound:
                stem = "diff-" + "".join(ch if ch.isalnum() else "-" for ch in label)
                paths = run.save_transcript(ctx, f"{stem}-target", ours_exchange)
                paths += run.save_transcript(ctx, f"{stem}-oracle", oracle_exchange)
                ctx.fail(f"{label}: output {i} differs from the oracle's: NMSE {error:.3g} > {bound:g}\n"
                         f"target {got.ravel()[:6]}\noracle {want.ravel()[:6]}\ntraces: {', '.join(paths)}")

    example()
