"""Reports of a conformance run that people read: JSON for tools, a self-contained HTML page.

Every case becomes one record: its id (citing its SPEC.md section), the section, its level
(MUST / SHOULD), the verdict (passed, failed, xfailed, xpassed, skipped), its duration, the
reason (the failure with expected vs actual, the skip or known-deviation reason), the
requirement it checks (the rule's statement, or the case's title) and the trace files of a
failing exchange with their decoded frames.  The HTML page has, like Autobahn's reports, a
matrix of sections x verdicts on top and every case below, expandable; it needs nothing but
a browser.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

VERDICTS = ("passed", "failed", "xfailed", "xpassed", "skipped")
SECTION_NAMES = {"2": "Framing", "3": "Handshake and versioning", "4": "rpc_tensor", "5": "Device queries",
                 "6": "Buffers", "7": "Tensors", "8": "Graphs", "9": "Hash cache", "10": "Server-to-server link",
                 "11": "Version differences", "12": "Security considerations", "13": "Recorded traces",
                 "14": "What real clients rely on"}


@dataclass
class CaseRecord:
    id: str
    section: str
    level: str
    kind: str
    verdict: str
    duration: float
    reason: str = ""
    requirement: str = ""
    advisory: str = ""
    traces: list[str] = field(default_factory=list)
    exchange: str = ""  # the traces' frames, decoded
    forgiven: str = ""  # the known-deviation entry (--upstream) that made a failure expected


def requirement_of(check) -> str:
    """What the case checks, in SPEC.md's words where a rule states it."""
    from ggml_rpc_spec.protocol.rules import BY_KEY

    rule = BY_KEY.get(check.rule) if check.rule else None
    if rule is not None:
        answer = "the server serves the request" if rule.serves else "the server closes the connection"
        return f"§{rule.section} {rule.level} `{rule.key}`: {rule.title} ({answer})"
    return f"§{check.section} {check.level}: {check.title}"


def decoded(paths: list[str]) -> str:
    """The frames of trace files, as `ggml-rpc-trace show` prints them."""
    from ggml_rpc_spec.protocol.trace import decode_trace
    from ggml_rpc_spec.traces.show import render

    parts = []
    for path in paths:
        try:
            parts.append(f"== {path}\n" + render(decode_trace(Path(path).read_bytes())))
        except Exception as exc:  # a report must not fail on a damaged trace
            parts.append(f"== {path}\n(cannot decode: {exc})")
    return "\n".join(parts)


def record(check, report, traces: list[str], forgiven: str = "") -> CaseRecord:
    if hasattr(report, "wasxfail"):  # an expected failure keeps what failed, after the deviation it is
        verdict = "xfailed" if report.skipped else "xpassed"
        reason = report.wasxfail + (f"\n\n{report.longreprtext}" if report.skipped and report.longreprtext else "")
    elif report.skipped:
        verdict = "skipped"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    else:
        verdict, reason = report.outcome, (report.longreprtext if report.failed else "")
    return CaseRecord(check.case_id, check.section, check.level, check.kind, verdict, round(report.duration, 4),
                      reason.strip(), requirement_of(check), check.advisory, traces, decoded(traces), forgiven)


def summary(records: list[CaseRecord]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for r in records:
        counts = table.setdefault(r.section.split(".")[0], dict.fromkeys(VERDICTS, 0))
        counts[r.verdict] += 1
    return dict(sorted(table.items(), key=lambda item: int(item[0])))


def differential(run):
    """The run's differential fuzzing coverage (cases.diff_fuzz.Coverage), if that case ran."""
    from .cases.diff_fuzz import coverage_of

    return coverage_of(run)


def as_json(run, records: list[CaseRecord]) -> dict:
    coverage = differential(run)
    return {"target": run.endpoint, "target_kind": run.kind, "reported_version": run.reported,
            "known_deviations": run.deviation_source or None,
            "protocol": run.profile.name, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "summary": summary(records), "killers": run.killers,
            "fuzz_findings": [asdict(f) for f in run.campaign.findings.values()],
            "differential": coverage.as_dict() if coverage is not None else None,
            "cases": [asdict(r) for r in records]}


def _coverage_html(run) -> str:
    """A table with one row per op of the differential fuzzing, if it ran."""
    coverage = differential(run)
    if coverage is None:
        return ""
    e = html.escape
    rows = "".join(f'<tr class="{"failed" if t.mismatches else "passed" if t.examples else "skipped"}"><td>{e(op)}</td>'
                   f"<td>{t.examples}</td><td>{t.graphs}</td><td>{t.mismatches}</td><td>{e(t.first[:300])}</td></tr>"
                   for op, t in coverage.ops.items())
    return (f"<h2>Differential fuzzing coverage</h2><p>{e(coverage.lines()[0])}</p><table class=\"matrix\">"
            f"<tr><th>op</th><th>examples</th><th>graphs</th><th>mismatches</th><th>first mismatch</th></tr>{rows}"
            "</table>")


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em} table.matrix{border-collapse:collapse;margin:1em 0}
.matrix td,.matrix th{border:1px solid #ccc;padding:.3em .8em;text-align:right}
.matrix th:first-child,.matrix td:first-child{text-align:left}
.passed{background:#e6f4ea}.failed{background:#fce8e6}.xfailed{background:#fef7e0}
.xpassed{background:#e8f0fe}.skipped{background:#f1f3f4}
details{border:1px solid #ddd;margin:.3em 0;padding:.3em .6em;border-radius:4px}
summary{cursor:pointer} .verdict{font-weight:bold;text-transform:uppercase;margin-right:.6em}
pre{background:#f8f8f8;padding:.6em;overflow:auto;max-height:30em;font-size:12px}
.filter a{margin-right:.8em;cursor:pointer;text-decoration:underline}
"""

_SCRIPT = """
function show(v){document.querySelectorAll('details.case').forEach(function(d){
  d.style.display=(v==='all'||d.classList.contains(v))?'':'none';});}
"""


def as_html(run, records: list[CaseRecord]) -> str:
    e = html.escape
    table = summary(records)
    rows = []
    for section, counts in table.items():
        cells = "".join(f'<td class="{v if counts[v] else ""}">{counts[v]}</td>' for v in VERDICTS)
        rows.append(f"<tr><td>§{section} {e(SECTION_NAMES.get(section, ''))}</td>{cells}</tr>")
    totals = {v: sum(c[v] for c in table.values()) for v in VERDICTS}
    rows.append("<tr><th>total</th>" + "".join(f"<th>{totals[v]}</th>" for v in VERDICTS) + "</tr>")
    cases = []
    for r in records:
        body = [f"<p><b>Requirement:</b> {e(r.requirement)}</p>"]
        if r.advisory:
            body.append(f"<p><b>Regression for:</b> {e(r.advisory)}</p>")
        if r.forgiven:
            body.append(f"<p><b>Forgiven as a known deviation:</b> {e(r.forgiven)}</p>")
        body.append(f"<p><b>Level:</b> {r.level} &middot; <b>kind:</b> {e(r.kind)} &middot; "
                    f"<b>duration:</b> {r.duration:.3f} s</p>")
        if r.reason:
            body.append(f"<p><b>{'Reason' if r.verdict != 'failed' else 'Failure'}:</b></p><pre>{e(r.reason)}</pre>")
        if r.traces:
            body.append(f"<p><b>Trace files:</b> {e(', '.join(r.traces))}</p><pre>{e(r.exchange)}</pre>")
        opened = " open" if r.verdict == "failed" else ""
        cases.append(f'<details class="case {r.verdict}" id="{e(r.id)}"{opened}><summary>'
                     f'<span class="verdict">{r.verdict}</span>{e(r.id)}</summary>{"".join(body)}</details>')
    findings = "".join(f"<li>{e(f.kind)} [{e(f.rule)}]: {e(f.what)} &mdash; {e(f.detail)} (trace: {e(f.trace)})</li>"
                       for f in run.campaign.findings.values())
    header = "".join(f"<th>{v}</th>" for v in VERDICTS)
    links = " ".join(f"<a onclick=\"show('{v}')\">{v}</a>" for v in ("all",) + VERDICTS)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>GGML RPC conformance: {e(run.endpoint)}</title>
<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>
<h1>GGML RPC conformance report</h1>
<p>Target <b>{e(run.endpoint)}</b> ({e(run.kind)}); the server reports protocol {e(str(run.reported))},
the suite spoke {e(run.profile.name)}; {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.</p>
<table class="matrix"><tr><th>SPEC.md section</th>{header}</tr>{"".join(rows)}</table>
{f"<h2>Hostile fuzzing findings</h2><ul>{findings}</ul>" if findings else ""}
{_coverage_html(run)}
{("<h2>Cases that killed the server</h2><ul>" + "".join(f"<li>{e(k)}</li>" for k in run.killers) + "</ul>")
 if run.killers else ""}
<h2>Cases</h2><p class="filter">Show: {links}</p>
{"".join(cases)}
</body></html>
"""


def write_reports(run, records: list[CaseRecord], json_path: str | None, html_path: str | None) -> list[str]:
    written = []
    if json_path:
        Path(json_path).write_text(json.dumps(as_json(run, records), indent=1))
        written.append(json_path)
    if html_path:
        Path(html_path).write_text(as_html(run, records))
        written.append(html_path)
    return written
