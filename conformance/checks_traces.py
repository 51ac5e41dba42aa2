"""§12: replay every recorded fixture whose protocol version is the target's.

The fixtures are sessions between the real upstream client and server (fixtures/, see
tools/record_fixtures.py); replaying one relocates it onto the target and judges every
reply (exact, structural, or within a tolerance for computed floats).
"""

from __future__ import annotations

from pathlib import Path

from protocol.trace import Trace, decode_trace
from reference_impl.replay import DIFFERS, TOLERANCE, passed, replay

from .core import Check, Context, register, require

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _replays(trace: Trace):
    def run(ctx: Context) -> None:
        results = replay(trace, ctx.endpoint, timeout=ctx.timeout * 6)
        bad = [f"#{r.index} {r.command}: {r.detail}" for r in results if r.verdict == DIFFERS]
        require(passed(results), "every reply as recorded (relocated; computed floats within " + ", ".join(
                    f"{k} {v:.0%}" for k, v in TOLERANCE.items()) + " of each tensor's largest value)",
                "; ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""))

    return run


for _path in sorted(FIXTURES.glob("*/*.ggmlrpc")):
    _trace = decode_trace(_path.read_bytes())
    _name = _path.relative_to(FIXTURES).with_suffix("")
    register(Check(f"trace.{_name}", "12", f"replays fixtures/{_name} ({_trace.header.get('note', 'recorded session')})",
                   _replays(_trace), kind="trace", protocols=(_trace.protocol,)))
