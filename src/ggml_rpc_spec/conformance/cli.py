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


SHORTER = {"--conformance-json": "--json", "--conformance-html": "--html"}  # the command's names for them


def build_parser() -> argparse.ArgumentParser:
    """The plugin's options (plugin.OPTIONS), the target as an argument, and --junitxml;
    nothing has a default here, so only what was given is passed on to pytest."""
    from .plugin import OPTIONS

    parser = argparse.ArgumentParser(
        prog="ggml-rpc-conformance", description="Run the GGML RPC conformance suite against a server.",
        epilog="Any other option goes to pytest (-k EXPR selects cases by id, -x stops at the first failure). "
               "Case ids cite SPEC.md sections; the summary counts them per section.")
    for flag, option in OPTIONS:
        keywords = option.copy()
        keywords.pop("default", None)
        if flag == "--target":
            keywords["default"] = None
            parser.add_argument("target", nargs="?", **keywords)
        else:
            parser.add_argument(SHORTER.get(flag, flag), dest=flag, **keywords)
    parser.add_argument("--junitxml", metavar="FILE", help="write JUnit XML (for CI systems)")
    return parser


def pytest_args(args, extra: list[str]) -> list[str]:
    from .plugin import OPTIONS

    out = ["--pyargs", "ggml_rpc_spec.conformance", "-p", "no:cacheprovider", "-q"]
    for flag, keywords in OPTIONS:
        value = getattr(args, "target" if flag == "--target" else flag)
        if keywords.get("action") == "store_true":
            out += [flag] if value else []
        elif keywords.get("action") == "append":
            for item in value or ():
                out += [flag, item]
        elif value is not None:
            out += [flag, str(value)]
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
