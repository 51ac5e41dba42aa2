"""ggml-rpc-conformance: run the whole conformance suite against a server, from any directory.

    ggml-rpc-conformance HOST:PORT [--level should] [--destructive --restart-cmd CMD]
                         [--json report.json] [--html report.html] [--junitxml junit.xml]

It is pytest with the suite's plugin (`pytest --pyargs ggml_rpc_spec.conformance`); options it
does not know are passed to pytest as they are (-k EXPR, -x, -v, ...).  Exit status: 0 when
every case passed (known deviations of upstream versions count as expected failures), 1 when
a case failed, 2 and above for usage errors and an unreachable target.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ggml-rpc-conformance", description="Run the GGML RPC conformance suite against a server.",
        epilog="Any other option goes to pytest (-k EXPR selects cases by id, -x stops at the first failure). "
               "Case ids cite SPEC.md sections; the summary counts them per section.")
    parser.add_argument("target", nargs="?", default=None, metavar="HOST:PORT",
                        help="the server to test (default: a reference server started for the run)")
    parser.add_argument("--proto", help="speak this protocol version instead of the one HELLO reports")
    parser.add_argument("--device", type=int, help="device index for device-specific cases (default 0)")
    parser.add_argument("--level", choices=("must", "should"), help="MUST cases only (default), or SHOULD too")
    parser.add_argument("--section", action="append", metavar="S",
                        help="only the cases of SPEC.md section S (7, 8.2, ...) and its subsections; repeatable")
    parser.add_argument("--destructive", action="store_true", help="also run cases that kill vulnerable servers")
    parser.add_argument("--restart-cmd", metavar="CMD", help="shell command that restarts the target after it died")
    parser.add_argument("--fuzz-examples", type=int, metavar="N", help="examples per fuzz case (default 25; 0: none)")
    parser.add_argument("--fuzz-seconds", type=float, metavar="S", help="run the hostile fuzzer for S seconds")
    parser.add_argument("--oracle", metavar="HOST:PORT", help="server to compare random graphs with")
    parser.add_argument("--target-has-cache", action="store_true", help="the target runs with a hash cache")
    parser.add_argument("--case-timeout", type=float, metavar="S", help="seconds a case waits for a reply (10)")
    parser.add_argument("--trace-dir", metavar="DIR", help="where failing exchanges are saved (conformance-traces)")
    parser.add_argument("--json", metavar="FILE", help="write a JSON report")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    parser.add_argument("--junitxml", metavar="FILE", help="write JUnit XML (for CI systems)")
    return parser


def pytest_args(args, extra: list[str]) -> list[str]:
    out = ["--pyargs", "ggml_rpc_spec.conformance", "-p", "no:cacheprovider", "-q"]
    options = {"target": "--target", "proto": "--proto", "device": "--device", "level": "--level",
               "restart_cmd": "--restart-cmd", "fuzz_examples": "--fuzz-examples", "fuzz_seconds": "--fuzz-seconds",
               "oracle": "--oracle", "case_timeout": "--case-timeout", "trace_dir": "--trace-dir",
               "json": "--conformance-json", "html": "--conformance-html"}
    for name, flag in options.items():
        value = getattr(args, name)
        if value is not None:
            out += [flag, str(value)]
    for name, flag in (("destructive", "--destructive"), ("target_has_cache", "--target-has-cache")):
        if getattr(args, name):
            out.append(flag)
    for section in args.section or ():
        out += ["--section", section]
    if args.junitxml:
        out.append(f"--junitxml={args.junitxml}")
    return out + extra


# pytest options that take a value as the next word: that word is theirs, not the target
PYTEST_VALUED = {"-k", "-m", "-p", "-o", "-c", "-W", "-r", "--deselect", "--ignore", "--maxfail", "--tb",
                 "--rootdir", "--basetemp", "--log-level", "--durations", "--timeout"}


def split_pytest_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """(ours, pytest's): the words of pytest's valued options (`-k EXPR`) go to pytest whole."""
    ours, theirs = [], []
    words = iter(argv)
    for word in words:
        if word in PYTEST_VALUED:
            theirs += [word, next(words, "")]
        else:
            ours.append(word)
    return ours, theirs


def main(argv: list[str] | None = None) -> int:
    import pytest

    ours, theirs = split_pytest_options(sys.argv[1:] if argv is None else list(argv))
    args, extra = build_parser().parse_known_args(ours)
    return int(pytest.main(pytest_args(args, extra + theirs)))


if __name__ == "__main__":
    sys.exit(main())
