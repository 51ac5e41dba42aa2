"""Differential graph fuzzing: random valid nodes of every op, computed by the target and by
an oracle.

Every op of the catalogue that the target's ggml has is drawn in turn (op_draw.py: shapes,
types, values, strides, views, permutations and every op_params word from the op's own
declarations), `--fuzz-examples` spread evenly over the ops, and built on the target and on
the oracle server (`--oracle HOST:PORT`, e.g. the real upstream server; by default the
reference server, started locally when the target is another server) with the same inputs.
Both compute it, and the node's result is compared with the error measure and bound of
upstream's op test program: the normalised mean squared error (NMSE) against the op's
maximum (0 for copies, integer results and indices).  A mismatch, or a valid node one side
refuses, is saved as two trace files, the target's exchange and the oracle's, and the run
goes on with the next op: the verdict lists every op that disagreed.  The report has a
coverage line per op: the examples drawn of it and the graphs it took part in (the view
ops are drawn as the layouts of other ops' sources).

Comparing the reference server with itself proves nothing, and is refused: when the target
is the reference server the suite started and no --oracle is given, and when --oracle names
the target.  Fixed op cases (op_cases.py, upstream's test-backend-ops) pin known cases; this
finds the combinations they miss.
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky

from ggml_rpc_spec.client.graphs import GraphBuilder
from ggml_rpc_spec.client.rpc import RPCClient, ServerClosed
from ggml_rpc_spec.protocol.errors import ProtocolError

from ..core import CaseFailure, Checks, Context
from .op_draw import Drawn, build, draw_node, drawable

checks = Checks()  # this module's cases (see conformance.cases)

BUFFER = 1 << 22  # every drawn graph fits
REFUSED_SELF = ("refused: the target is the suite's own reference server and no --oracle is given; comparing the "
                "reference server with itself proves nothing: give --oracle HOST:PORT (e.g. a real upstream server)")


@dataclass
class OpTally:
    """One op in a differential run."""

    examples: int = 0  # examples drawn of it
    graphs: int = 0  # graphs it took part in (its own examples, and as a source's layout)
    mismatches: int = 0
    first: str = ""  # the first mismatch, as the verdict says it


@dataclass
class Coverage:
    """Per op, what a differential run drew and found: the report's coverage lines."""

    target: str
    oracle: str
    ops: dict[str, OpTally] = field(default_factory=dict)

    def tally(self, op: str) -> OpTally:
        return self.ops.setdefault(op, OpTally())

    def lines(self) -> list[str]:
        drawn = sum(1 for t in self.ops.values() if t.examples)
        found = [f"differential fuzzing of {self.target} against {self.oracle}: {drawn} ops drawn, "
                 f"{sum(t.examples for t in self.ops.values())} examples, "
                 f"{sum(1 for t in self.ops.values() if t.mismatches)} ops mismatched"]
        found += [f"  {op:24s} {t.examples:5d} examples {t.graphs:6d} graphs {t.mismatches:4d} mismatches"
                  + (f"  first: {t.first.splitlines()[0][:120]}" if t.first else "") for op, t in self.ops.items()]
        return found

    def mismatched(self) -> list[str]:
        """Every op that mismatched, with its first mismatch."""
        return [f"{op}: {t.first}" for op, t in self.ops.items() if t.mismatches]

    def as_dict(self) -> dict:
        return {"target": self.target, "oracle": self.oracle, "ops": {op: asdict(t) for op, t in self.ops.items()}}


COVERAGE = pytest.StashKey[Coverage]()


def coverage_of(run) -> Coverage | None:
    """The coverage of the run's differential fuzzing, if it ran."""
    return run.config.stash.get(COVERAGE, None)


class _CoverageSummary:
    """Prints the coverage lines after the suite's own summary (registered when the case runs)."""

    def __init__(self, coverage: Coverage) -> None:
        self.coverage = coverage

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.section("differential fuzzing coverage per op")
        for line in self.coverage.lines():
            terminalreporter.write_line(line)


def nmse(got: np.ndarray, want: np.ndarray) -> float:
    """test-backend-ops' error measure: squared differences over squares, summed.  Elements
    both sides hold alike (infinities and NaNs included) add nothing, as the program's NaN and
    inf checks let them pass; an infinity or NaN on one side only is an infinite error."""
    got, want = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    differ = ~((got == want) | (np.isnan(got) & np.isnan(want)))
    if not differ.any():
        return 0.0
    if not (np.isfinite(got[differ]).all() and np.isfinite(want[differ]).all()):
        return float("inf")
    scale = float((want[np.isfinite(want)] ** 2).sum())
    return float(((got[differ] - want[differ]) ** 2).sum() / scale) if scale else float("inf")


class ServerGone(Exception):
    """A server stopped accepting connections: the run cannot go on."""


@dataclass
class Answer:
    """One server's answer to a drawn node."""

    result: np.ndarray | None  # None: the server refused (closed the connection)
    exchange: object  # probe.Transcript: what went over the connection
    refusal: str = ""


def compute(ctx: Context, endpoint: str, drawn: Drawn) -> Answer:
    """Build the drawn node on a fresh connection to `endpoint` and compute it."""
    from ..probe import Transcript

    exchange = Transcript()
    try:
        with RPCClient(endpoint, proto=ctx.profile, timeout=ctx.timeout, tap=exchange.add) as rpc:
            g = GraphBuilder(rpc.profile, rpc.alloc_buffer(BUFFER))
            node = build(g, drawn)
            return Answer(g.run(rpc, [node], nodes=g.ops())[0], exchange)
    except ConnectionRefusedError:
        raise ServerGone(f"{endpoint} stopped accepting connections (at {drawn.label})") from None
    except (ServerClosed, ProtocolError) as exc:
        return Answer(None, exchange, str(exc))


def same_server(a: str, b: str) -> bool:
    """Whether two HOST:PORT name one listening socket (names resolved)."""
    def addresses(endpoint: str) -> set:
        host, _, port = endpoint.rpartition(":")
        try:
            return {info[4][:2] for info in socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)}
        except (OSError, ValueError):
            return {endpoint}

    return bool(addresses(a) & addresses(b))


def judge(drawn: Drawn, ours: Answer, theirs: Answer) -> str:
    """Why the target's answer is not the oracle's ("" when it is)."""
    target, oracle = ours.result, theirs.result
    if oracle is None:
        return f"the oracle refused the node: {theirs.refusal}" if target is not None else ""
    if target is None:
        return f"the target refused a node the oracle computed: {ours.refusal}"
    if not drawn.order:  # the order inside a row is not part of the contract
        target, oracle = np.sort(target, axis=-1), np.sort(oracle, axis=-1)
    error = nmse(target, oracle)
    if error <= drawn.nmse:
        return ""
    return f"NMSE {error:.3g} > {drawn.nmse:g}\ntarget {target.ravel()[:6]}\noracle {oracle.ravel()[:6]}"


def fuzz_op(ctx: Context, oracle: str, op: str, examples: int, coverage: Coverage) -> None:
    """`examples` drawn nodes of `op` on the target and the oracle; the first mismatch fails
    (shrunk, unless the target is live), noted in `coverage`."""
    run = ctx.run

    @settings(max_examples=examples, deadline=None, database=None,
              phases=[Phase.generate] if ctx.live_fuzz else list(Phase), suppress_health_check=list(HealthCheck))
    @given(st.data())
    def example(data):
        drawn = draw_node(data.draw, op, ctx.profile)
        ours, theirs = compute(ctx, ctx.endpoint, drawn), compute(ctx, oracle, drawn)
        for name in drawn.ops:
            coverage.tally(name).graphs += 1
        coverage.tally(op).examples += 1
        why = judge(drawn, ours, theirs)
        if why:
            stem = "diff-" + "".join(ch if ch.isalnum() else "-" for ch in drawn.label)
            paths = [] if run is None else (run.save_transcript(ctx, f"{stem}-target", ours.exchange)
                                            + run.save_transcript(ctx, f"{stem}-oracle", theirs.exchange))
            failure = f"{drawn.label} {drawn.names}: {why}\ntraces: {', '.join(paths) or 'none'}"
            tally = coverage.tally(op)
            tally.mismatches += 1  # noted now: the example may have killed a server that hypothesis asks again
            tally.first = tally.first or failure
            raise CaseFailure(failure)

    try:
        example()
    except (CaseFailure, Flaky) as exc:
        tally = coverage.tally(op)
        tally.first = tally.first or str(exc)
        tally.mismatches = max(tally.mismatches, 1)


def differential_run(ctx: Context, oracle: str, ops: list[str], examples: int, coverage: Coverage) -> list[str]:
    """`examples` spread over `ops` (each at least once while there are enough); the ops that
    mismatched, with their first mismatch."""
    share, extra = divmod(examples, len(ops))
    for index, op in enumerate(ops):
        count = share + (index < extra)
        coverage.tally(op)
        if count:
            fuzz_op(ctx, oracle, op, count, coverage)
    return coverage.mismatched()


@checks.check("8.5", "random valid graphs of every op compute as the oracle server computes them", kind="fuzz")
def differential(ctx: Context) -> None:
    run = ctx.run
    oracle = run.oracle_endpoint()
    if oracle is None:
        ctx.skip(REFUSED_SELF)
    if same_server(oracle, ctx.endpoint):
        ctx.fail(f"refused: --oracle {oracle} is the target {ctx.endpoint} itself; comparing a server with itself "
                 "proves nothing: give another server")
    coverage = run.config.stash.setdefault(COVERAGE, Coverage(ctx.endpoint, oracle))
    if not run.config.pluginmanager.has_plugin("differential-coverage"):
        run.config.pluginmanager.register(_CoverageSummary(coverage), "differential-coverage")
    try:
        mismatched = differential_run(ctx, oracle, drawable(ctx.profile), ctx.fuzz_examples, coverage)
    except ServerGone as exc:
        mismatched = coverage.mismatched() + [str(exc)]
    if mismatched:
        ctx.fail(f"{len(mismatched)} op(s) computed otherwise than the oracle {oracle}:\n" + "\n".join(mismatched))
