"""§13: replay every recorded fixture whose protocol version is the target's.

The fixtures are sessions between the real upstream client and server (fixtures/, see
tools/record_fixtures.py); replaying one relocates it onto the target and judges every
reply (exact, structural, or within a tolerance for computed floats).  A connection of a
tensor-parallel session that set up a server-to-server link replays with the link trace
of its folder: the suite is the other rank and sends that rank's recorded partials.  Link
traces are no cases of their own.
"""

from __future__ import annotations

from importlib.resources import files

from ggml_rpc_spec.protocol.trace import LINK, Trace, decode_trace
from ggml_rpc_spec.traces.replay import DIFFERS, TOLERANCE, link_of, passed, replay

from ..core import Check, Checks, Context, require

checks = Checks()  # this module's cases (see conformance.cases)

FIXTURES = "ggml_rpc_spec.fixtures"  # shipped as package data


def fixtures() -> list[tuple[str, bytes]]:
    """(folder/name, bytes) of every fixture trace, in order, wherever the package is installed."""
    found = []
    for folder in files(FIXTURES).iterdir():
        if folder.is_dir():
            found += [(f"{folder.name}/{entry.name[:-len('.ggmlrpc')]}", entry.read_bytes())
                      for entry in folder.iterdir() if entry.name.endswith(".ggmlrpc")]
    return sorted(found)


def _replays(trace: Trace, link: Trace | None):
    def run(ctx: Context) -> None:
        results = replay(trace, ctx.endpoint, timeout=ctx.timeout * 6, link=link)
        bad = [f"#{r.index} {r.command}: {r.detail}" for r in results if r.verdict == DIFFERS]
        require(passed(results), "every reply as recorded (relocated; computed floats within an NMSE of " + ", ".join(
                    f"{k} {v:g}" for k, v in TOLERANCE.items()) + ")",
                "; ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""))

    return run


_TRACES = {name: decode_trace(raw) for name, raw in fixtures()}
for _name, _trace in _TRACES.items():
    if _trace.kind == LINK:
        continue
    if _trace.protocol is None:  # a connection trace names the version it speaks
        raise ValueError(f"fixtures/{_name} names no protocol")
    _folder = [t for n, t in _TRACES.items() if n.split("/")[0] == _name.split("/")[0]]
    checks.add(Check(f"trace.{_name}", "13", f"replays fixtures/{_name} ({_trace.header.get('note', 'recorded session')})",
                   _replays(_trace, link_of(_trace, _folder)), kind="trace", protocols=(_trace.protocol,)))
