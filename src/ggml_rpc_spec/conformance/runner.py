"""Running the conformance cases: the target, per-case contexts, liveness, reports."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from ggml_rpc_spec.protocol.errors import ProtocolError, RemoteProtocolError, UnsupportedVersion
from ggml_rpc_spec.protocol.rules import SHOULD
from ggml_rpc_spec.protocol.versions import HELLO_PROBES, NEWEST, profile_for
from ggml_rpc_spec.client.rpc import RPCClient, ServerClosed

from .core import CaseFailure, Context
from .report import SECTION_NAMES
from .deviations import deviations_of, rule_deviations


def negotiate(endpoint: str, forced, timeout: float):
    """(profile to speak, version the server reports).  A server reporting an unknown version
    is still tested, in the newest profile of its HELLO family, so that the §3 cases can say
    what is wrong instead of the run stopping."""
    problem = None
    candidates = [forced] if forced else [None, *HELLO_PROBES]
    for candidate in candidates:
        try:
            with RPCClient(endpoint, proto=candidate, timeout=timeout) as rpc:
                return rpc.profile, "%d.%d.%d" % rpc.server_version
        except UnsupportedVersion as exc:
            problem = str(exc)
        except ServerClosed as exc:
            problem = problem or str(exc)
            if candidate is None:
                break  # both HELLO shapes were tried and refused
        except (OSError, TimeoutError) as exc:
            raise pytest.UsageError(f"cannot connect to the target {endpoint}: {exc.strerror or exc}") from None
    raise pytest.UsageError(f"cannot talk to {endpoint}: {problem}")


class Conformance:
    """The target of this run, its version, and the bookkeeping of the run."""

    def __init__(self, config) -> None:
        self.config = config
        option = config.getoption
        self.restart_cmd = option("--restart-cmd")
        self.timeout = option("--case-timeout")
        self.trace_dir = Path(option("--trace-dir"))
        self.cache = option("--target-has-cache")
        self.cache_dir = option("--target-cache-dir")
        self.started = None
        self._tmp = None
        self._restarted: list[subprocess.Popen] = []
        self.killers: list[str] = []
        self.results: dict[str, Counter] = defaultdict(Counter)
        self.records: list = []  # report.CaseRecord per case run
        self.case_traces: dict[str, list[str]] = {}  # check key -> trace files of its failure
        forced = profile_for(option("--proto")) if option("--proto") else None
        target = option("--target")
        if target:
            self.endpoint = target
            self.kind = "external"
        else:
            from ggml_rpc_spec.server.service import ReferenceServer

            self._tmp = tempfile.TemporaryDirectory(prefix="conformance-cache-")
            self.started = ReferenceServer(profile=forced or NEWEST, devices=2, memory=1 << 30,
                                           cache_dir=self._tmp.name).start()
            self.endpoint = self.started.endpoint
            self.kind = "reference server started by the suite"
            self.cache = True
            self.cache_dir = self._tmp.name
        self.profile, self.reported = negotiate(self.endpoint, forced, self.timeout)
        self.dead = ""  # the case during which the target stopped answering for good ("" while it answers)
        self.forgiven: dict[str, str] = {}  # case id -> the deviation entry that forgave it
        self.deviations, self.deviation_source = self._deviations(option("--upstream"), option("--known-deviations"))
        self.fuzz_deviations = rule_deviations(self.deviations)
        self.device = option("--device")
        self.fuzz_seconds = option("--fuzz-seconds")
        self.skip_rules = frozenset(key for keys in option("--skip-rule") for key in keys.split(",") if key)
        self.oracle = option("--oracle")
        self._oracle_server = None
        from .cases.hostile_fuzz import Campaign

        self.campaign = Campaign()

    def _deviations(self, upstream: bool, version: str | None) -> tuple[dict[str, str], str]:
        """The deviations the run forgives: none, unless the target is declared to be upstream's
        own server (of the version it reports, or of `version`)."""
        if not upstream and not version:
            return {}, ""
        version = version or self.reported
        try:
            return deviations_of(version), f"upstream's {version} server"
        except KeyError as exc:
            raise pytest.UsageError(str(exc.args[0])) from None

    def forgiveness(self, check, failure: CaseFailure | None) -> str | None:
        """The deviation entry that forgives `check` failing (with `failure`), or None."""
        entry = self.deviations.get(check.key)
        if entry is not None:
            return f"{check.key}: {entry}"
        if failure is not None and failure.rules:
            found = [self.fuzz_deviations[rule] for rule in failure.rules if rule in self.fuzz_deviations]
            if len(found) == len(failure.rules):  # every rule the failure broke is a known deviation
                return "; ".join(sorted({f"{key}: {reason}" for key, reason in found}))
        return None

    def context(self) -> Context:
        return Context(self.endpoint, self.profile, device=self.device, timeout=self.timeout, cache=self.cache,
                       cache_dir=self.cache_dir,
                       fuzz_examples=self.config.getoption("--fuzz-examples"), live_fuzz=self.started is None,
                       run=self)

    def oracle_endpoint(self) -> str | None:
        """Where differential fuzzing computes the same graphs: --oracle, else a reference
        server started here (when the target is another server), else None."""
        if self.oracle:
            return self.oracle
        return None if self.started is not None else self.reference().endpoint

    def reference(self):
        """A reference server speaking the target's version: the target itself when the suite
        started it, else one started here on first use."""
        if self.started is not None:
            return self.started
        if self._oracle_server is None:
            from ggml_rpc_spec.server.service import ReferenceServer

            self._oracle_server = ReferenceServer(profile=self.profile, memory=1 << 30).start()
        return self._oracle_server

    def save_transcript(self, ctx: Context, stem: str, exchange) -> list[str]:
        """One connection's exchange as a trace file in the trace folder; its path."""
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, raw in enumerate(ctx.traces(stem, [(stem, exchange)])):
            path = self.trace_dir / f"{stem}-{index + 1}.ggmlrpc"
            path.write_bytes(raw)
            paths.append(str(path))
        return paths

    def alive(self, patience: float | None = None) -> bool:
        """A new client is served within `patience` seconds (default: the case timeout, at
        least 5 s).  A serial server (listen backlog 1) may still be draining connections a
        case just closed, and the kernel backs off SYN retries meanwhile, so this asks
        repeatedly, each attempt bounded by the case timeout."""
        deadline = time.monotonic() + (patience if patience is not None else max(self.timeout, 5.0))
        while True:
            try:
                RPCClient(self.endpoint, proto=self.profile, timeout=min(self.timeout, 3.0)).close()
                return True  # it completed a HELLO exchange
            except ConnectionRefusedError:
                return False  # nothing listens: dead, no point waiting
            except RemoteProtocolError:
                return True  # it answered, if wrongly: alive (the cases judge the answers)
            except (OSError, ServerClosed, TimeoutError, ProtocolError):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.5)  # then ask again: polling for the server to answer

    def restart(self) -> bool:
        if not self.restart_cmd:
            return False
        self._restarted.append(subprocess.Popen(self.restart_cmd, shell=True, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.alive(patience=2.0):
                return True
            time.sleep(0.2)  # polling until the restarted server answers
        return False

    def close(self) -> None:
        for server in (self.started, self._oracle_server):
            if server is not None:
                server.shutdown()
        for process in self._restarted:
            try:
                os.killpg(process.pid, 15)
            except OSError:
                pass
        if self._tmp is not None:
            self._tmp.cleanup()


def run_case(check, run: Conformance, request) -> None:
    config = request.config
    missing = check.missing_from(run.profile)
    if missing:
        pytest.skip(missing)
    if check.level == SHOULD and config.getoption("--level") != "should":
        pytest.skip("SHOULD-level case: run with --level should")
    if check.destroys(run.profile) and not config.getoption("--destructive") and run.started is None:
        pytest.skip("can kill a vulnerable server: run with --destructive (and --restart-cmd)")
    if check.kind == "fuzz" and config.getoption("--fuzz-examples") <= 0:
        pytest.skip("fuzzing disabled (--fuzz-examples 0)")
    if run.dead:
        pytest.fail(f"{check.case_id}\nnot run: the target stopped answering during {run.dead} and nothing "
                    "restarted it (--restart-cmd)", pytrace=False)
    ctx = run.context()
    failure: CaseFailure | None = None
    try:
        check.run(ctx)
    except CaseFailure as exc:
        failure = exc
    except (ServerClosed, TimeoutError, ProtocolError, OSError) as exc:
        failure = CaseFailure(f"unexpected: {type(exc).__name__}: {exc}")
    finally:
        ctx.close()
    message = str(failure) if failure is not None else ""
    if not run.alive():
        run.killers.append(check.case_id)
        restarted = run.restart()
        if not restarted:
            run.dead = check.case_id
        how = ("; restarted with --restart-cmd" if restarted else
               "; --restart-cmd did not bring it back" if run.restart_cmd else
               "; no --restart-cmd: the cases after it are not run")
        message = (message + "\n" if message else "") + "the server stopped serving during this case" + how
        failure = failure or CaseFailure("")
    forgiven = run.forgiveness(check, failure)
    if failure is not None:
        saved = run.case_traces[check.key] = save_traces(run, check, ctx)
        report = f"{check.case_id}\n{message}\n\nexchange:\n{ctx.hexdump()}\n\ntrace files: {', '.join(saved) or 'none'}"
        if forgiven:
            run.forgiven[check.case_id] = forgiven
            pytest.xfail(f"known deviation of {run.deviation_source} ({forgiven})\n\n{report}")
        pytest.fail(report, pytrace=False)
    if forgiven:  # a listed deviation the target does not have: XPASS, reported as such
        run.forgiven[check.case_id] = forgiven
        request.node.add_marker(pytest.mark.xfail(reason=f"known deviation of {run.deviation_source} ({forgiven})",
                                                  strict=False))


def save_traces(run: Conformance, check, ctx: Context) -> list[str]:
    run.trace_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{check.section}-{check.key}").strip("-")
    paths = []
    for index, raw in enumerate(ctx.traces(check.case_id)):
        path = run.trace_dir / f"{stem}-{index + 1}.ggmlrpc"
        path.write_bytes(raw)
        paths.append(str(path))
    return paths


def write_summary(terminalreporter, run: Conformance) -> None:
    if not run.results:
        return
    write = terminalreporter.write_line
    terminalreporter.section("conformance summary per SPEC.md section")
    forced = " (forced by --proto)" if run.config.getoption("--proto") and run.kind == "external" else ""
    write(f"target {run.endpoint} ({run.kind}): reports protocol {run.reported}, spoken {run.profile.name}{forced}")
    write(f"levels: MUST{' + SHOULD' if run.config.getoption('--level') == 'should' else ''}; destructive cases "
          f"{'included' if run.config.getoption('--destructive') or run.started else 'skipped (--destructive)'}")
    columns = ("passed", "failed", "xfailed", "xpassed", "skipped")
    write(f"{'section':32s}" + "".join(f"{c:>9s}" for c in columns))
    for section in sorted(run.results, key=lambda s: int(s)):
        counts = run.results[section]
        title = f"§{section} {SECTION_NAMES.get(section, '')}"
        write(f"{title:32s}" + "".join(f"{counts[c]:9d}" for c in columns))
    if run.deviation_source:
        write(f"known deviations of {run.deviation_source} forgiven (--upstream): {len(run.forgiven)} case(s)")
        for case, entry in run.forgiven.items():
            write(f"  {case}\n    under {entry}")
    else:
        write("every case judged against SPEC.md (no --upstream: no known deviation is forgiven)")
    if run.killers:
        write("cases that killed the server:")
        for case in run.killers:
            write(f"  {case}")
    findings = run.campaign.findings.values()
    if run.campaign.examples:
        write(f"hostile fuzzing: {run.campaign.examples} examples, {len(findings)} distinct finding(s)")
        for finding in findings:
            write(f"  {finding.kind} [{finding.rule}]: {finding.what}\n    trace: {finding.trace or '(not saved)'}")
