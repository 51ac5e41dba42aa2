"""`python -m bench`'s op throughput rows: upstream's op test program in `perf` mode (its own
list of large, real-world cases per op), against our server and the upstream server:

  per op: our time per run of the op, upstream's, and the speed ratio (upstream's time /
    ours, summed over the op's cases measured on both)
  geometric mean of the speed ratios over the ops      target >= 0.3
  the five slowest ops                                 target >= 0.03 each

Each case's graph (the op's node repeated up to 8192 times) is timed as the server computes
it, by a GraphMeter between the program and the server: the program's own figures time only
its sending (upstream_peers/graph_meter.py).  The upstream server is measured first and its
cases are the list: ours then runs exactly those, named one by one (`--ops-sample N`: the
first N of each op).  A case that reports on one side only is listed as missing, with why.
"""

from __future__ import annotations

from dataclasses import dataclass

from ggml_rpc_spec.upstream_peers.backend_ops import Judge, PerfResult

from bench.measure import AT_LEAST, geometric_mean, row

GEOMEAN_TARGET, SLOWEST_TARGET, SLOWEST = 0.3, 0.03, 5


@dataclass
class OpSpeed:
    op: str
    ours: PerfResult
    theirs: PerfResult

    def pairs(self) -> list[tuple[float, float]]:
        """(ours, upstream) microseconds per run of each case measured on both sides."""
        mine = {case.name: case.us_per_run for case in self.ours.cases if case.us_per_run is not None}
        return [(mine[case.name], case.us_per_run) for case in self.theirs.cases
                if case.us_per_run is not None and case.name in mine]

    @property
    def times(self) -> tuple[float, float]:
        pairs = self.pairs()
        return sum(a for a, _ in pairs), sum(b for _, b in pairs)

    @property
    def ratio(self) -> float:
        ours, theirs = self.times
        return theirs / ours

    def problems(self) -> list[str]:
        """What was not measured, side by side."""
        lines = [f"  {side}: {result.op}: {result.error}" for side, result in (("ours", self.ours),
                                                                              ("upstream", self.theirs))
                 if result.error]
        lines += [f"  missing on {side}: {case.name}: {case.detail}" for side, result in (("ours", self.ours),
                                                                                          ("upstream", self.theirs))
                  for case in result.missing]
        return lines


def measure(peer, ours: str, theirs: str, ops: list[str] | None, sample: int,
            log=print) -> tuple[list[OpSpeed], list[str]]:
    """Every op of `ops` (default: every op the program tests) that has perf cases, and the
    ops that have none."""
    judges = Judge(peer, ours, log=log), Judge(peer, theirs, log=log)
    names = ops or list(judges[1].catalogue())
    speeds, without = [], []
    for i, op in enumerate(names, 1):
        upstream = judges[1].perf_op(op, limit=sample)
        if not upstream.cases and not upstream.error:
            without.append(op)
            continue
        ours_result = judges[0].perf_op(op, only=[case.name for case in upstream.cases])
        speeds.append(OpSpeed(op, ours_result, upstream))
        log(f"  [{i}/{len(names)}] {op}: {len(upstream.cases)} cases")
    return speeds, without


def rows(speeds: list[OpSpeed], without: list[str], named: bool) -> list[str]:
    """A row per op, then the geometric mean and the slowest ops with their targets; the ops
    without perf cases named when they were asked for by name (`named`), else counted."""
    out, measured = [], [s for s in speeds if s.pairs()]
    if without:
        out.append(f"op throughput: no perf case for {', '.join(without)}" if named else
                   f"op throughput: {len(speeds)} ops have perf cases ({len(without)} ops of the program have none)")
    for speed in speeds:
        if speed.pairs():
            ours, theirs = speed.times
            out.append(row(f"  {speed.op} ({len(speed.pairs())} cases)", ours, theirs, "us/run", ratio=speed.ratio))
        else:
            out.append(f"  {speed.op}: no case measured on both sides")
        out += speed.problems()
    if not measured:
        return out + ["op throughput: no op measured"]
    times = [s.times for s in measured]
    out.append(row(f"op throughput, geometric mean over {len(measured)} ops", geometric_mean([a for a, _ in times]),
                   geometric_mean([b for _, b in times]), "us/run", (AT_LEAST, GEOMEAN_TARGET),
                   ratio=geometric_mean([s.ratio for s in measured])))
    for speed in sorted(measured, key=lambda s: s.ratio)[:SLOWEST]:
        ours, theirs = speed.times
        out.append(row(f"op throughput, slowest: {speed.op}", ours, theirs, "us/run", (AT_LEAST, SLOWEST_TARGET),
                       ratio=speed.ratio))
    missing = sum(len(s.ours.missing) + len(s.theirs.missing) + bool(s.ours.error) + bool(s.theirs.error)
                  for s in speeds)
    if missing:
        out.append(f"op throughput: {missing} case(s) or op(s) not measured, listed above")
    return out
