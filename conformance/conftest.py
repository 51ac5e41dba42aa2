"""The conformance suite as a pytest plugin: `pytest conformance --target HOST:PORT`.

Options (also `pytest conformance --help`):
  --target HOST:PORT   server under test (or $GGML_RPC_TARGET); without one the suite
                       starts the reference server on a free port
  --proto VERSION      speak this version instead of the one HELLO reports
  --device N           device index to use for device-specific cases
  --strict             (pytest's own flag) also run SHOULD-level cases
  --destructive        also run cases known to kill vulnerable servers
  --restart-cmd CMD    shell command that restarts the target after it died
  --fuzz-examples N    hypothesis examples per fuzz case (0 disables them)
  --target-has-cache   the target runs with a hash cache directory
  --trace-dir DIR      where failing exchanges are saved as trace files
"""

from __future__ import annotations

import os

import pytest

from .core import all_checks
from .report import record, write_reports
from .runner import Conformance, write_summary

DEFAULT_TRACE_DIR = "conformance-traces"


def pytest_addoption(parser):
    group = parser.getgroup("ggml-rpc conformance", "GGML RPC conformance suite")
    group.addoption("--target", default=os.environ.get("GGML_RPC_TARGET"), metavar="HOST:PORT",
                    help="server under test (default: $GGML_RPC_TARGET, else a reference server started here)")
    group.addoption("--proto", default=None, metavar="VERSION",
                    help="speak this protocol version instead of the one the server's HELLO reports")
    group.addoption("--device", type=int, default=0, metavar="N", help="device index for device-specific cases")
    group.addoption("--destructive", action="store_true",
                    help="also run cases that kill vulnerable servers (pair with --restart-cmd)")
    group.addoption("--restart-cmd", default=None, metavar="CMD",
                    help="shell command that restarts the target after a case killed it")
    group.addoption("--fuzz-examples", type=int, default=25, metavar="N",
                    help="hypothesis examples per fuzz case (default 25, 0 disables)")
    group.addoption("--oracle", default=None, metavar="HOST:PORT",
                    help="differential fuzzing computes random graphs on the target and on this server (default: "
                         "a reference server started here when the target is another server)")
    group.addoption("--fuzz-seconds", type=float, default=0, metavar="SECONDS",
                    help="run the hostile fuzzer for this long instead of --fuzz-examples examples")
    group.addoption("--target-has-cache", action="store_true",
                    help="the target runs with a hash cache directory (enables the cache-hit cases)")
    group.addoption("--case-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="how long a case waits for any reply (default 10)")
    group.addoption("--conformance-json", default=None, metavar="FILE",
                    help="write a JSON report (per case: id, section, level, verdict, duration, reason, traces)")
    group.addoption("--conformance-html", default=None, metavar="FILE",
                    help="write a self-contained HTML report (sections x verdicts, every case expandable)")
    group.addoption("--trace-dir", default=DEFAULT_TRACE_DIR, metavar="DIR",
                    help=f"where failing exchanges are saved as trace files (default {DEFAULT_TRACE_DIR})")


def pytest_configure(config):
    config.conformance = Conformance(config)


def pytest_unconfigure(config):
    if hasattr(config, "conformance"):
        config.conformance.close()


def pytest_report_header(config):
    run = getattr(config, "conformance", None)
    if run is None:
        return None
    forced = " (forced by --proto)" if config.getoption("--proto") and run.kind == "external" else ""
    return [f"conformance target: {run.endpoint} ({run.kind})",
            f"protocol: server reports {run.reported}; speaking {run.profile.name}{forced}",
            f"levels: MUST{' + SHOULD (--strict)' if config.getoption('strict') else ''}; destructive cases "
            f"{'included' if config.getoption('--destructive') else 'skipped (--destructive)'}"]


def pytest_generate_tests(metafunc):
    if "check" not in metafunc.fixturenames:
        return
    run = metafunc.config.conformance
    selected = [c for c in all_checks() if c.applies_to(run.profile)]
    metafunc.parametrize("check", selected, ids=[c.case_id for c in selected])


@pytest.fixture
def conformance(request):
    return request.config.conformance


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    check = getattr(getattr(item, "callspec", None), "params", {}).get("check")
    run = getattr(item.config, "conformance", None)
    if check is None or run is None or not (report.when == "call" or report.skipped):
        return
    case = record(check, report, run.case_traces.get(check.key, []))
    run.records.append(case)
    run.results[check.section.split(".")[0]][case.verdict] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    run = getattr(config, "conformance", None)
    if run is not None:
        write_summary(terminalreporter, run)
        for path in write_reports(run, run.records, config.getoption("--conformance-json"),
                                  config.getoption("--conformance-html")):
            terminalreporter.write_line(f"report written: {path}")
