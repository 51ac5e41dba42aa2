"""The conformance suite as a pytest plugin (entry point `pytest11`), idle unless selected:

    pytest --pyargs ggml_rpc_spec.conformance --target HOST:PORT [options]
    ggml-rpc-conformance HOST:PORT [options]                  # the same, from any directory

Options (also `pytest --help`, group "GGML RPC conformance"):
  --target HOST:PORT      server under test (or $GGML_RPC_TARGET); without one the suite
                          starts the reference server on a free port
  --proto VERSION         speak this version instead of the one HELLO reports
  --device N              device index to use for device-specific cases
  --level must|should     MUST cases only (default), or SHOULD cases too
  --section S             only the cases of SPEC.md section S and its subsections (repeatable)
  --skip-rule KEY         leave out the cases of a rule, and fuzzing aimed at it (repeatable)
  --destructive           also run cases known to kill vulnerable servers
  --upstream              the target is upstream's own server: its measured deviations are
                          expected failures (--known-deviations VERSION: of that version)
  --restart-cmd CMD       shell command that restarts the target after it died
  --fuzz-examples N       hypothesis examples per fuzz case (0 disables them)
  --fuzz-seconds S        run the hostile fuzzer for S seconds instead
  --oracle HOST:PORT      the server differential fuzzing compares the target with
  --target-has-cache      the target runs with a hash cache directory
  --target-cache-dir DIR  that directory, readable and writable here (enables the §9 cases
                          that damage cache files)
  --trace-dir DIR         where failing exchanges are saved as trace files
  --conformance-json F    a JSON report; --conformance-html F: a self-contained HTML report

Nothing connects before a case runs: `--help` and `--collect-only` never touch the target,
and a session that collects no conformance case is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypedDict

import pytest

from .cases import all_checks
from .report import record, write_reports
from .runner import Conformance, write_summary

DEFAULT_TRACE_DIR = "conformance-traces"
LEVELS = ("must", "should")
_RUN = pytest.StashKey["Conformance"]()
_ESCAPING = "disable_test_id_escaping_and_forfeit_all_rights_to_community_support"


class Option(TypedDict, total=False):
    """The argparse keywords of one option (pytest's addoption takes the same ones)."""

    default: object
    metavar: str
    help: str
    type: Callable[[str], object]
    choices: Sequence[str]
    action: str


# The suite's options (flag, argparse keywords), for pytest and for ggml-rpc-conformance alike.
OPTIONS: tuple[tuple[str, Option], ...] = (
    ("--target", Option(default=os.environ.get("GGML_RPC_TARGET"), metavar="HOST:PORT",
                      help="server under test (default: $GGML_RPC_TARGET, else a reference server started here)")),
    ("--proto", Option(default=None, metavar="VERSION",
                     help="speak this protocol version instead of the one the server's HELLO reports")),
    ("--device", Option(type=int, default=0, metavar="N", help="device index for device-specific cases")),
    ("--level", Option(choices=LEVELS, default="must",
                     help="must: MUST-level cases only (default); should: SHOULD-level cases too")),
    ("--section", Option(action="append", default=[], metavar="S",
                       help="only the cases of SPEC.md section S (e.g. 7, 8.2) and its subsections; repeatable")),
    ("--skip-rule", Option(action="append", default=[], metavar="KEY[,KEY]",
                         help="leave out the cases of these protocol.rules keys, and hostile fuzzing aimed at them "
                              "(e.g. the data-dependent rules a guard cannot enforce); repeatable")),
    ("--destructive", Option(action="store_true",
                           help="also run cases that kill vulnerable servers (pair with --restart-cmd)")),
    ("--upstream", Option(action="store_true",
                        help="the target is upstream's own server: its measured deviations (of the version it "
                             "reports) are expected failures, each named in the summary and the reports")),
    ("--known-deviations", Option(default=None, metavar="VERSION",
                                help="as --upstream, with the deviations of upstream's server of VERSION")),
    ("--restart-cmd", Option(default=None, metavar="CMD",
                           help="shell command that restarts the target after a case killed it")),
    ("--fuzz-examples", Option(type=int, default=25, metavar="N",
                             help="hypothesis examples per fuzz case (default 25, 0 disables)")),
    ("--fuzz-seconds", Option(type=float, default=0, metavar="SECONDS",
                            help="run the hostile fuzzer for this long instead of --fuzz-examples examples")),
    ("--oracle", Option(default=None, metavar="HOST:PORT",
                      help="differential fuzzing computes random graphs on the target and on this server (default: "
                           "a reference server started here when the target is another server)")),
    ("--target-has-cache", Option(action="store_true",
                                help="the target runs with a hash cache directory (enables the cache-hit cases)")),
    ("--target-cache-dir", Option(default=None, metavar="DIR",
                                help="the target's hash cache directory, on this machine and writable: enables the "
                                     "cases that damage cache files (implies --target-has-cache)")),
    ("--case-timeout", Option(type=float, default=10.0, metavar="SECONDS",
                            help="how long a case waits for any reply (default 10)")),
    ("--conformance-json", Option(default=None, metavar="FILE",
                                help="write a JSON report (per case: id, section, level, verdict, duration, reason, "
                                     "traces)")),
    ("--conformance-html", Option(default=None, metavar="FILE",
                                help="write a self-contained HTML report (sections x verdicts, every case "
                                     "expandable)")),
    ("--trace-dir", Option(default=DEFAULT_TRACE_DIR, metavar="DIR",
                         help=f"where failing exchanges are saved as trace files (default {DEFAULT_TRACE_DIR})")),
)


def pytest_addoption(parser):
    group = parser.getgroup("ggml-rpc conformance", "GGML RPC conformance suite (pytest --pyargs "
                                                    "ggml_rpc_spec.conformance)")
    for flag, keywords in OPTIONS:
        group.addoption(flag, **keywords)


def run_of(config) -> Conformance:
    """The run's target and bookkeeping, made when the first case needs it."""
    run = config.stash.get(_RUN, None)
    if run is None:
        try:
            run = config.stash[_RUN] = Conformance(config)
        except pytest.UsageError as exc:  # no target to test: the whole run stops, with the reason
            pytest.exit(f"error: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    return run


def pytest_unconfigure(config):
    run = config.stash.get(_RUN, None)
    if run is not None:
        run.close()


def pytest_generate_tests(metafunc):
    if "check" not in metafunc.fixturenames:
        return
    checks = all_checks()
    # case ids cite SPEC sections ("§7.2 ..."): shown as written, for these ids only
    cache = metafunc.config._inicache
    before = cache.get(_ESCAPING, None)
    cache[_ESCAPING] = True
    try:
        metafunc.parametrize("check", checks, ids=[c.case_id for c in checks])
    finally:
        if before is None:
            cache.pop(_ESCAPING, None)
        else:
            cache[_ESCAPING] = before


def pytest_collection_modifyitems(config, items):
    sections = config.getoption("--section")
    skipped = {key for keys in config.getoption("--skip-rule") for key in keys.split(",") if key}
    if not sections and not skipped:
        return
    chosen: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        check = getattr(getattr(item, "callspec", None), "params", {}).get("check")
        inside = check is None or ((not sections or any(check.section == s or check.section.startswith(s + ".")
                                                         for s in sections)) and check.rule not in skipped)
        (chosen if inside else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = chosen


@pytest.fixture
def conformance(request):
    return run_of(request.config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    check = getattr(getattr(item, "callspec", None), "params", {}).get("check")
    run = item.config.stash.get(_RUN, None)
    if check is None or run is None or not (report.when == "call" or report.skipped):
        return
    case = record(check, report, run.case_traces.get(check.key, []), run.forgiven.get(check.case_id, ""))
    run.records.append(case)
    run.results[check.section.split(".")[0]][case.verdict] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    run = config.stash.get(_RUN, None)
    if run is not None:
        write_summary(terminalreporter, run)
        for path in write_reports(run, run.records, config.getoption("--conformance-json"),
                                  config.getoption("--conformance-html")):
            terminalreporter.write_line(f"report written: {path}")
