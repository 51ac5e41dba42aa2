"""Upstream's own op test program, `test-backend-ops`, as the judge of GRAPH_COMPUTE.

    ggml-rpc-peers backend-ops --target HOST:PORT [--op OP ...] [--peer 0.3.36]
                                         [--sample N] [--json FILE] [--timeout SECONDS]

`test-backend-ops` (vendored in each llama-cpp-python sdist) builds thousands of small
graphs, one op each, computes them on a backend and on ggml's CPU backend and compares
the results within per-op error bounds.  The program has no RPC option: the copy compiled
here (into the peer cache, never the checkout) registers an RPC server named by the
GGML_RPC_TARGET environment variable, which becomes the device `RPC0`.

The upstream RPC client aborts the whole process when a server closes the connection, so
every op runs in a process of its own.  The program prints a case only once it finished, so
when the process dies the case it was running is the next one of the op in the program's
own case list (its `support` mode lists them in order): that case is run alone to confirm
the refusal, and the op resumes with the cases not reached yet, named one by one.

Every case is accounted for.  A run that finished prints, after its case lines, its own
totals ("N/M tests passed") and the names of its failing cases ("Failing tests:"); a case
can fail without a line of its own (when the server refuses ALLOC_BUFFER the program prints
"failed to allocate tensors [...] " with no newline, in front of the next line).  The case
lines, the totals, the failing list and the exit status must agree; a missing summary, an
unknown line or any disagreement fails the op with the reason (see `ProgramOutput.problems`).

`Judge.perf_op` runs the program's `perf` mode (its own list of large, real-world cases)
through a GraphMeter, which times every graph as the server computes it: the program's own
figures time only the sending of requests (see graph_meter).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ggml_rpc_spec.protocol.versions import profile_for

from .build import DEVICE, PROGRAM, TARGET_VARIABLE, JudgeError, PeerNotBuilt, ensure_program
from .catalog import CI_PEERS, Peer, peer_for
from .graph_meter import GraphMeter

# A finished case: "  OP(vars): OK|FAIL|not supported [...]", preceded on the same line by what
# the comparison printed while it ran ("[OP] ERR = 0.5 > 1e-07 ", "[OP] NaN at index 3 ...").
# Cases that test a fused graph have names of their own ("RMS_NORM_MUL_ADD", "SILU_MUL") and
# run in test mode only, so `support` mode does not list them: their names are read from the
# op_desc overrides of the program's source (kept beside the compiled program).
FUSED_BODY = re.compile(r'op_desc\(ggml_tensor \* t\) override \{([^}]*)\}')
FUSED_NAME = re.compile(r'"([A-Z][A-Z0-9_]*)"')  # every name an override can return ("A" or cond ? "B" : "C")
FUSED_SUFFIX = re.compile(r'op_desc\(ggml_tensor \* t\) override \{[^}]*?ggml_unary_op_name\(op\)\) \+ "(_[A-Z0-9_]+)"')

# the newest CI peer whose sdist gives the program (a binary wheel has no sources to build it from)
DEFAULT_PEER = [release for release in CI_PEERS if peer_for(release).dist.sdist][-1]

CASE_LINE = re.compile(r"^(?P<said>.*?)  (?P<op>[A-Z][A-Z0-9_]*)\((?P<vars>[^()]*)\): (?P<rest>.*)$")
# a case of perf mode: "  OP(vars):   <padding>  N runs - T us/run - ...", or "  OP(vars): not supported"
PERF_LINE = re.compile(r"^  (?P<name>[A-Z][A-Z0-9_]*\(.*\)): +(?:(?P<runs>\d+) runs - +[0-9.]+ us/run|not supported)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A case that failed before it could print its line: the message has no newline, so it stands
# in front of whatever the program prints next (the next case's line, or the totals).
NO_ALLOCATION = re.compile(r"^failed to allocate (?:weight )?tensors \[(?:[^][]|\[[^][]*\])*\] ")
TOTALS = re.compile(r"^  (?P<passed>\d+)/(?P<run>\d+) tests passed$")
FAILING_HEADER = "Failing tests:"
FAILING_ENTRY = re.compile(r"^  (?P<name>[A-Z][A-Z0-9_]*\([^()]*\))$")
# The program's other lines (device banner, per-backend and overall verdicts), known and ignored.
FRAME_LINES = re.compile(r"^(|Testing \d+ devices|Backend \d+/\d+: .*|  Skipping.*|  Device description: .*|"
                         r"  Device memory: .*|  Backend .*: (?:OK|FAIL)|\d+/\d+ backends passed|OK|FAIL)$")


def fused_names(source: str, peer: Peer) -> list[str]:
    """Names of the program's fused-graph cases (see FUSED_NAME); a name may turn out to have
    no cases in test mode (it is then left out of the results)."""
    from ggml_rpc_spec.protocol.ggml import GGML_RELEASES

    unary = GGML_RELEASES[profile_for(peer.protocol).ggml_release].unary_ops
    names = {name for body in FUSED_BODY.findall(source) if "return" in body for name in FUSED_NAME.findall(body)}
    names.update(op + suffix for suffix in FUSED_SUFFIX.findall(source) for op in unary)
    return sorted(names - {suffix for suffix in FUSED_SUFFIX.findall(source)})


# -- running it ---------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    name: str  # OP(vars), as the program prints it
    verdict: str  # "passed", "failed", "refused", "not supported"
    detail: str = ""  # the program's message (ERR = ..., NaN at ...), or the abort message


@dataclass
class OpResult:
    op: str
    cases: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # what the runs' outputs do not account for, a timeout

    @property
    def error(self) -> str:
        return "; ".join(self.problems)

    def count(self, verdict: str) -> int:
        return sum(1 for case in self.cases if case.verdict == verdict)

    @property
    def ok(self) -> bool:
        return not self.error and all(case.verdict in ("passed", "not supported") for case in self.cases)

    @property
    def first_problem(self) -> CaseResult | None:
        return next((c for c in self.cases if c.verdict in ("failed", "refused")), None)


@dataclass
class PerfCase:
    name: str  # OP(vars), as the program prints it
    us_per_run: float | None = None  # the server's time per run of the op (None: not measured)
    runs: int = 0  # runs of the op per timed graph
    detail: str = ""  # why it was not measured


@dataclass
class PerfResult:
    op: str
    cases: list[PerfCase] = field(default_factory=list)
    error: str = ""  # the program died with no list of cases to resume from, or failed on its own

    @property
    def missing(self) -> list[PerfCase]:
        return [case for case in self.cases if case.us_per_run is None]


class Judge:
    """The compiled program of one peer, pointed at one target."""

    def __init__(self, peer: Peer, target: str, *, timeout: float | None = None, log=print) -> None:
        self.peer = peer
        self.target = target
        self.timeout = timeout
        self.binary = ensure_program(peer, log=log)
        self._catalogue: dict[str, list[str]] | None = None

    def _run(self, args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, **{TARGET_VARIABLE: self.target}, GGML_NO_BACKTRACE="1")
        try:
            return subprocess.run([str(self.binary), *args], env=env, capture_output=True, text=True,
                                  errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            # returncode None marks a run that timed out (typeshed allows only an int there)
            return subprocess.CompletedProcess(exc.cmd, returncode=None, stdout=out,  # type: ignore[arg-type]
                                               stderr="timeout")

    def catalogue(self) -> dict[str, list[str]]:
        """Per op name, the full names of its cases in the program's order (from `support`
        mode, which runs nothing), then the fused-graph names with no list (see FUSED_NAME)."""
        if self._catalogue is None:
            result = self._run(["support", "-b", DEVICE], timeout=300)
            if result.returncode != 0:
                raise JudgeError(f"{PROGRAM} support -b {DEVICE} failed against {self.target} "
                                 f"(exit {result.returncode}):\n{(result.stderr or result.stdout)[-2000:]}")
            found: dict[str, list[str]] = {}
            for line in result.stdout.splitlines():
                match = CASE_LINE.match(ANSI.sub("", line))
                if match:
                    found.setdefault(match["op"], []).append(f"{match['op']}({match['vars']})")
            if not found:
                raise JudgeError(f"{PROGRAM} listed no cases against {self.target}:\n{result.stdout[-2000:]}")
            fused = fused_names((self.binary.parent / f"{PROGRAM}.cpp").read_text(), self.peer)
            self._catalogue = found | {name: [] for name in fused if name not in found}
        return self._catalogue

    def run_op(self, op: str, *, only: list[str] | None = None, restarts: int = 200) -> OpResult:
        """All cases of `op` (or the cases named in `only`, in the program's order), resuming
        after each refusal."""
        result = OpResult(op)
        started = time.monotonic()
        listed = list(only) if only is not None else self.catalogue().get(op, [])
        filter_ = ",".join(listed) if only is not None else op
        for _ in range(restarts + 1):
            run = self._run(["test", "-b", DEVICE, "-o", filter_], timeout=self.timeout)
            output = parse_output(run.stdout)
            if output.totals is not None or run.returncode in (0, 1, None):  # it finished, or cannot go on
                result.cases += output.results()
                result.problems += output.problems(run.returncode)
                break
            finished = output.cases  # it died in the case after these (see the module's docstring)
            result.cases += finished
            result.problems += [f"{message} (a case before {op}'s refusal; not named: the run died)"
                                for message in output.unallocated] + output.unknown_lines()
            done = {case.name for case in result.cases}
            remaining = [name for name in listed if name not in done]
            if not remaining:  # a fused-graph op (no case list) or past its last listed case
                after = finished[-1].name if finished else "the start"
                result.cases.append(CaseResult(f"{op}(the case after {after})", "refused", _abort_message(run)))
                result.problems.append("the cases after a refusal are not listed by the program: not run")
                break
            suspect = self._run(["test", "-b", DEVICE, "-o", remaining[0]], timeout=self.timeout)
            alone = parse_output(suspect.stdout)
            if alone.totals is not None:  # it finishes when run alone: the case that died is one the list does not name
                after = finished[-1].name if finished else "the first"
                result.cases.append(CaseResult(f"{op}(an unlisted case after {after})", "refused", _abort_message(run)))
                result.cases += alone.results()
                result.problems += alone.problems(suspect.returncode)
            else:
                result.cases.append(CaseResult(remaining[0], "refused", _abort_message(suspect)))
            remaining = remaining[1:]
            if not remaining:
                break
            filter_ = ",".join(remaining)
        else:
            result.problems.append(f"gave up after {restarts} refusals")
        result.seconds = time.monotonic() - started
        return result

    def perf_op(self, op: str, *, only: list[str] | None = None, limit: int = 0, budget: float = 1.0) -> PerfResult:
        """Time the perf-mode cases of `op` (or those named in `only`, in the program's order;
        with `limit`, the first `limit` only), each graph timed as the server computes it for
        `budget` seconds.  A named case that does not report is missing; a program that dies
        resumes after the case it was running, named by `only`."""
        result = PerfResult(op)
        remaining = list(only) if only is not None else None
        while True:
            cases, finished, why = self._perf_run(op if remaining is None else ",".join(remaining), limit, budget)
            result.cases += cases
            if finished:
                break
            if remaining is None:
                last = cases[-1].name if cases else "the start"
                result.error = f"the program died after {last}: {why}"
                break
            done = {case.name for case in result.cases}
            remaining = [name for name in remaining if name not in done]
            if not remaining:
                break
            result.cases.append(PerfCase(remaining.pop(0), detail=f"the program died running it: {why}"))
            if not remaining:
                break
        reported = {case.name for case in result.cases}
        result.cases += [PerfCase(name, detail="not reported by the program") for name in only or ()
                         if name not in reported]
        return result

    def _perf_run(self, filter_: str, limit: int, budget: float) -> tuple[list[PerfCase], bool, str]:
        """One run of the program's perf mode through a GraphMeter: the cases it reported, each
        with the meter's timing of its graph (paired in order), whether the program finished
        (or reached `limit`), and else why it did not."""
        lines: list[tuple[str, int | None]] = []  # (name, the program's count of runs; None: not supported)
        expired = threading.Event()
        with GraphMeter(self.target, profile_for(self.peer.protocol), budget=budget) as meter, \
                tempfile.TemporaryFile("w+") as errors:
            env = dict(os.environ, **{TARGET_VARIABLE: meter.endpoint}, GGML_NO_BACKTRACE="1")
            # line-buffered, so that each case is seen when it finishes (the program flushes only
            # the start of its lines)
            unbuffered = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
            proc = subprocess.Popen([*unbuffered, str(self.binary), "perf", "-b", DEVICE, "-o", filter_], env=env,
                                    text=True, errors="replace", stdout=subprocess.PIPE, stderr=errors)
            if proc.stdout is None:  # stdout=PIPE always gives one
                raise JudgeError("the op test program's stdout is not a pipe")

            def expire() -> None:
                expired.set()
                proc.kill()

            timer = threading.Timer(self.timeout or 0, expire)
            if self.timeout:
                timer.start()
            output = []
            for raw in proc.stdout:
                output.append(line := ANSI.sub("", raw))
                match = PERF_LINE.match(line)
                if match:
                    lines.append((match["name"], int(match["runs"]) if match["runs"] else None))
                    if len(lines) == limit:
                        meter.wait_past(limit)  # its last case timed, nothing more is needed
                        meter.finish()
                        proc.kill()
                        break
            proc.wait()
            timer.cancel()
            meter.wait_done(timeout=600)
            errors.seek(0)
            run = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(output), errors.read())
        stopped = bool(limit) and len(lines) == limit
        finished = stopped or (run.returncode == 0 and _perf_completed(run.stdout))
        why = "" if finished else f"timed out after {self.timeout:.0f}s" if expired.is_set() else _abort_message(run)
        timed = [name for name, runs in lines if runs is not None]
        # a case whose graph was under way when the program stopped or died has no line
        extra = len(meter.cases) - len(timed)
        if extra < 0 or (extra and finished and not stopped):
            why = why or f"the program reported {len(timed)} timed cases, the meter saw {len(meter.cases)} graphs"
            return [PerfCase(name, detail=why) for name, _ in lines], finished, why
        timings = iter(meter.cases)
        cases = []
        for name, runs in lines:
            timing = next(timings) if runs is not None else None
            if timing is None:
                cases.append(PerfCase(name, detail="not supported"))
            elif timing.us_per_run is None or runs % timing.runs:
                cases.append(PerfCase(name, detail=f"the program counted {runs} runs, the meter {timing.runs} per "
                                                   f"graph and {timing.repeats} timed repeats"))
            else:
                cases.append(PerfCase(name, timing.us_per_run, timing.runs))
        return cases, finished, why


@dataclass
class ProgramOutput:
    """What one run of the program printed on its standard output, every line accounted for."""

    cases: list[CaseResult] = field(default_factory=list)  # the case lines, in order
    unallocated: list[str] = field(default_factory=list)  # per case that failed to allocate, its message
    totals: tuple[int, int] | None = None  # (passed, run) of "N/M tests passed"; None: not printed
    failing: list[str] | None = None  # the names under "Failing tests:"; None: no such list
    unknown: list[str] = field(default_factory=list)  # lines of no shape the parser knows
    unfinished: str = ""  # a case whose line the program began and never ended: the case it died in

    def problems(self, exit_status: int | None) -> list[str]:
        """Why the run cannot be taken as it reads (none: every case is accounted for): of a
        finished run, the case lines, the totals, the failing list and the exit status must
        tell one story."""
        found = self.unknown_lines()
        if self.unfinished:
            found.append(f"the run stopped inside {self.unfinished}")
        if self.totals is None:
            return found + [f"no 'N/M tests passed' summary ({_status(exit_status)}): the run did not finish"]
        passed, run = self.totals
        lines_passed = sum(case.verdict == "passed" for case in self.cases)
        lines_failed = [case.name for case in self.cases if case.verdict == "failed"]
        if lines_passed != passed:
            found.append(f"the program counts {passed} passed, its case lines {lines_passed}")
        if lines_passed + len(lines_failed) + len(self.unallocated) != run:
            found.append(f"the program ran {run} cases, its lines account for {lines_passed} passed, "
                         f"{len(lines_failed)} failed and {len(self.unallocated)} that failed to allocate")
        listed = self.failing or []
        missing = [name for name in lines_failed if name not in listed]
        if missing:
            found.append(f"failed case lines not in the 'Failing tests:' list: {', '.join(missing[:3])}")
        if len(listed) != run - passed:
            found.append(f"'Failing tests:' lists {len(listed)} cases, the totals {run - passed} failures")
        if exit_status != (0 if passed == run else 1):
            found.append(f"{_status(exit_status)} after {passed}/{run} cases passed")
        return found

    def unknown_lines(self) -> list[str]:
        return [f"a line the parser does not know: {line!r}" for line in self.unknown[:3]]

    def results(self) -> list[CaseResult]:
        """The cases, those that failed to allocate included: named from the failing list (the
        names no failed case line has, in order), else after the line they stood in front of."""
        lined = {case.name for case in self.cases}
        names = iter([name for name in self.failing or [] if name not in lined])
        return self.cases + [CaseResult(next(names, "(an unnamed case)"), "failed", message)
                             for message in self.unallocated]


def parse_output(stdout: str) -> ProgramOutput:
    """Every line of one run of the program's standard output, classified."""
    output = ProgramOutput()
    for raw in stdout.splitlines():
        line = ANSI.sub("", raw)
        while (refused := NO_ALLOCATION.match(line)) is not None:
            output.unallocated.append(refused[0].strip())
            line = line[refused.end():]
        if output.failing is not None and (entry := FAILING_ENTRY.match(line)):
            output.failing.append(entry["name"])
        elif line == FAILING_HEADER:
            output.failing = []
        elif totals := TOTALS.match(line):
            output.totals = (int(totals["passed"]), int(totals["run"]))
        elif case := _case(line):
            output.cases.append(case)
        elif not FRAME_LINES.match(line):
            output.unknown.append(raw)
    started = CASE_LINE.match(ANSI.sub("", output.unknown[-1])) if output.unknown else None
    if started and not started["rest"].strip() and stdout.rstrip("\n").endswith(output.unknown[-1]):
        output.unfinished = f"{started['op']}({started['vars']})"  # the last line, begun: the run died in it
        output.unknown.pop()
    return output


def _case(line: str) -> CaseResult | None:
    """A finished case's line, or None for a line of another shape."""
    match = CASE_LINE.match(line)
    if not match:
        return None
    name, rest, said = f"{match['op']}({match['vars']})", match["rest"].strip(), match["said"].strip()
    if rest == "OK":
        return CaseResult(name, "passed")
    if rest.endswith("FAIL"):
        return CaseResult(name, "failed", " ".join(filter(None, (said, rest[:-4].strip()))))
    if rest.startswith(("not supported", "skipping")):
        return CaseResult(name, "not supported", rest)
    return None


def _status(code: int | None) -> str:
    return "timed out" if code is None else f"signal {-code}" if code < 0 else f"exit status {code}"


def _perf_completed(stdout: str) -> bool:
    """Perf mode's own end: every backend's status and the overall count."""
    match = re.search(r"^(\d+)/(\d+) backends passed$", stdout, re.MULTILINE)
    return match is not None and match[1] == match[2]


def _abort_message(run: subprocess.CompletedProcess) -> str:
    """Why the program died: the upstream client's abort message, else the exit status."""
    lines = [line for line in (run.stderr or "").splitlines() if line.strip()]
    wanted = [line for line in lines if "GGML_ASSERT" in line or "abort" in line.lower() or "error" in line.lower()]
    return (wanted or lines or [_status(run.returncode)])[-1].strip()[:300]


def sample(names: list[str], limit: int) -> list[str]:
    """At most `limit` of `names`, spread evenly over the list (first and last included)."""
    if limit <= 0 or len(names) <= limit:
        return list(names)
    if limit == 1:
        return [names[0]]
    step = (len(names) - 1) / (limit - 1)
    return [names[round(i * step)] for i in range(limit)]


# -- reporting ------------------------------------------------------------------------------------------


def table(results: list[OpResult]) -> str:
    """A per-op table: cases passed / failed / refused / not supported, and the first problem."""
    rows = [("op", "cases", "passed", "failed", "refused", "n/s", "seconds", "first failing case")]
    for r in results:
        problem = r.first_problem
        note = r.error or (f"{problem.name}: {problem.verdict}" + (f" ({problem.detail})" if problem.detail else "")
                           if problem else "")
        rows.append((r.op, str(len(r.cases)), str(r.count("passed")), str(r.count("failed")), str(r.count("refused")),
                     str(r.count("not supported")), f"{r.seconds:.1f}", note[:160]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             + "  " + row[-1] for row in rows]
    passing = sum(r.ok for r in results)
    totals = {v: sum(r.count(v) for r in results) for v in ("passed", "failed", "refused", "not supported")}
    lines.append(f"{passing}/{len(results)} ops pass every case; cases: {totals['passed']} passed, {totals['failed']} "
                 f"failed, {totals['refused']} refused, {totals['not supported']} not supported "
                 f"({sum(r.seconds for r in results):.0f}s)")
    return "\n".join(lines)


def report(results: list[OpResult], peer: Peer, target: str) -> dict:
    return {"peer": peer.release, "protocol": peer.protocol, "target": target,
            "ops": [{"op": r.op, "ok": r.ok, "seconds": round(r.seconds, 3), "error": r.error,
                     "passed": r.count("passed"), "failed": r.count("failed"), "refused": r.count("refused"),
                     "not_supported": r.count("not supported"), "cases": [asdict(c) for c in r.cases]}
                    for r in results]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ggml-rpc-peers backend-ops",
        description="Run upstream's test-backend-ops against a GGML RPC server, one process per op, and "
                    "print a per-op table.  Against the real upstream server every case passes (the baseline).")
    parser.add_argument("--target", required=True, help="HOST:PORT of the RPC server to judge")
    parser.add_argument("--peer", default=DEFAULT_PEER,
                        help=f"llama-cpp-python release whose program and client to use (default {DEFAULT_PEER}; "
                             "the target must speak its protocol)")
    parser.add_argument("--op", action="append", default=[], metavar="OP",
                        help="an op name as the program lists it (ADD, MUL_MAT, SWIGLU, ...); repeatable; "
                             "default: every op")
    parser.add_argument("--sample", type=int, default=0, metavar="N",
                        help="run at most N cases per op, spread over its case list (default: all)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="give up on one program run after this long (default: no limit)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' for stdout)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, file=sys.stderr, flush=True))
    try:
        peer = peer_for(args.peer)
        judge = Judge(peer, args.target, timeout=args.timeout, log=log)
        catalogue = judge.catalogue()
    except (KeyError, PeerNotBuilt, JudgeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    unknown = [op for op in args.op if op not in catalogue]
    if unknown:
        print(f"error: no cases for {', '.join(unknown)} in {PROGRAM} of {peer.release}; known: "
              f"{', '.join(catalogue)}", file=sys.stderr)
        return 2
    results = []
    for i, op in enumerate(args.op or list(catalogue), 1):
        only = sample(catalogue[op], args.sample) if args.sample and catalogue[op] else None
        result = judge.run_op(op, only=only)
        if not result.cases and not result.error:
            continue  # a fused-graph name without cases in this program
        results.append(result)
        log(f"[{i}/{len(args.op or catalogue)}] {op}: {result.count('passed')}/{len(result.cases)} passed"
            f"{'' if result.ok else ' -- ' + (result.error or 'FAIL')} ({result.seconds:.1f}s)")
    print(table(results))
    if args.json:
        text = json.dumps(report(results, peer, args.target), indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    return 0 if all(r.ok for r in results) else 1
