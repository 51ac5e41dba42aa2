"""The op judge accounts for every case of upstream's `test-backend-ops`.

The files in backend_ops_output/ are the program's real standard output (0.3.20 and 0.3.36,
run through RPC against reference servers broken on purpose, trimmed to a few cases with
their totals and failing lists kept consistent): every case passing, cases failing their
comparison, a case whose ALLOC_BUFFER the server refused (it has no line of its own: the
program's message stands in front of the next case's line) and a run where no case could
allocate (the totals on the line of the messages).  The other shapes are those files cut or
altered the way a broken run or a changed program would print them: each must fail the op.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ggml_rpc_spec.upstream_peers.backend_ops import Judge, parse_output, table

OUTPUTS = Path(__file__).resolve().parent / "backend_ops_output"
SUMMARY = "  3/3 tests passed\n"


def output(name: str) -> str:
    return (OUTPUTS / name).read_text()


def verdicts(stdout: str) -> list[tuple[str, str]]:
    return [(case.name, case.verdict) for case in parse_output(stdout).results()]


def test_every_case_passing_is_accounted_for():
    parsed = parse_output(output("passed.0.3.36.txt"))
    assert parsed.problems(0) == []
    assert [case.verdict for case in parsed.results()] == ["passed"] * 3
    assert parsed.totals == (3, 3)


def test_failed_comparisons_keep_the_programs_message():
    parsed = parse_output(output("compare-failed.0.3.20.txt"))
    assert parsed.problems(1) == []
    failed = parsed.results()
    assert [case.verdict for case in failed] == ["failed", "failed"]
    assert failed[1].detail.startswith("[SUM] ERR = inf > 0.000000100 [NONE] NaN at index 0")


def test_a_case_that_failed_to_allocate_is_a_failed_case():
    """The shape the issue names: three cases, two lines, the failure only in the totals and
    the failing list."""
    parsed = parse_output(output("failed-to-allocate.0.3.36.txt"))
    assert parsed.problems(1) == []
    assert verdicts(output("failed-to-allocate.0.3.36.txt")) == [
        ("SUM(type=f32,ne=[33,1,1,1])", "passed"), ("SUM(type=f32,ne=[33,256,1,1])", "passed"),
        ("SUM(type=f32,ne=[33,1024,1,1])", "failed")]
    assert parsed.results()[2].detail == "failed to allocate tensors [RPC0[127.0.0.1:36109]]"


def test_totals_on_the_line_of_the_allocation_failures_are_read():
    parsed = parse_output(output("nothing-allocated.0.3.20.txt"))
    assert parsed.totals == (0, 3) and parsed.problems(1) == []
    assert [verdict for _, verdict in verdicts(output("nothing-allocated.0.3.20.txt"))] == ["failed"] * 3


def test_a_run_that_died_inside_a_case_names_it():
    """The program prints a case's name before its verdict; a run that died (the upstream
    client aborts when a server closes the connection) ends inside that line."""
    text = output("passed.0.3.36.txt")
    died = text[:text.index("SUM(type=f32,ne=[33,1,1,1]): ") + len("SUM(type=f32,ne=[33,1,1,1]): ")]
    parsed = parse_output(died)
    assert parsed.unfinished == "SUM(type=f32,ne=[33,1,1,1])" and parsed.unknown == []
    assert [case.verdict for case in parsed.results()] == ["passed", "passed"]
    assert "the run stopped inside SUM(type=f32,ne=[33,1,1,1])" in parsed.problems(-6)


# Each: (file, how it is altered, exit status, words of the problem reported).
BROKEN = {
    "exit 1 with every case passed": ("passed.0.3.36.txt", lambda s: s, 1, "exit status 1 after 3/3"),
    "exit 0 with failures": ("compare-failed.0.3.20.txt", lambda s: s, 0, "exit status 0 after 0/2"),
    "no summary": ("passed.0.3.36.txt", lambda s: s.replace(SUMMARY, ""), 0, "no 'N/M tests passed' summary"),
    "a line the parser does not know": ("passed.0.3.36.txt", lambda s: s.replace(SUMMARY, "  SUM: odd\n" + SUMMARY),
                                        0, "a line the parser does not know: '  SUM: odd'"),
    "a case result the parser does not know": (
        "passed.0.3.36.txt", lambda s: s.replace("[33,1,1,1]): \x1b[1;32mOK", "[33,1,1,1]): MAYBE"), 0,
        "a line the parser does not know"),
    "totals larger than the lines": ("failed-to-allocate.0.3.36.txt",
                                     lambda s: s.replace("failed to allocate tensors [RPC0[127.0.0.1:36109]] ", ""), 1,
                                     "the program ran 3 cases, its lines account for 2 passed, 0 failed and 0"),
    "passes the lines do not show": ("compare-failed.0.3.20.txt", lambda s: s.replace("0/2 tests", "1/2 tests"), 1,
                                     "the program counts 1 passed, its case lines 0"),
    "a failed line missing from the failing list": (
        "compare-failed.0.3.20.txt",
        lambda s: s.replace("Failing tests:\n  SUM(type=f32,ne=[11,5,6,3],permute=[0,3,2,1])\n", "Failing tests:\n"), 1,
        "failed case lines not in the 'Failing tests:' list: SUM(type=f32,ne=[11,5,6,3],permute=[0,3,2,1])"),
    "no failing list": ("failed-to-allocate.0.3.36.txt",
                        lambda s: s.replace("Failing tests:\n  SUM(type=f32,ne=[33,1024,1,1])\n", ""), 1,
                        "'Failing tests:' lists 0 cases, the totals 1 failures"),
}


@pytest.mark.parametrize("shape", BROKEN)
def test_an_output_that_does_not_add_up_fails_the_op(shape):
    name, alter, status, reported = BROKEN[shape]
    altered = alter(output(name))
    assert altered != output(name) or status != (0 if "passed" in name else 1), "the alteration changed nothing"
    problems = parse_output(altered).problems(status)
    assert any(reported in problem for problem in problems), problems


def test_the_judge_fails_an_op_with_a_case_that_failed_to_allocate(monkeypatch):
    """Through Judge.run_op, as a sweep sees it: the op fails and the table names the case."""
    judge = Judge.__new__(Judge)
    judge.timeout, judge._catalogue = None, {"SUM": []}
    monkeypatch.setattr(judge, "_run", lambda args, timeout=None: subprocess.CompletedProcess(
        args, 1, output("failed-to-allocate.0.3.36.txt"), ""))
    result = judge.run_op("SUM")
    assert not result.ok and (result.count("passed"), result.count("failed")) == (2, 1)
    assert "SUM(type=f32,ne=[33,1024,1,1]): failed (failed to allocate tensors" in table([result])
