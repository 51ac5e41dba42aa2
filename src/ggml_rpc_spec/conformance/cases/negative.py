"""One negative case per validation rule, and one per published vulnerability.

Each comes from conformance/hostile.py: a fresh connection, one offending request, and the
verdict that the server closed that connection (liveness of the server is checked after
every case by the suite).  Cases that can kill a vulnerable server are `destructive`.
"""

from __future__ import annotations

from ..core import Check, Checks, Context
from .hostile import CASES, SURVIVAL_CASES

checks = Checks()  # this module's cases (see conformance.cases)


def _closes(case):
    def run(ctx: Context) -> None:
        if case.needs_cache and not ctx.cache:
            ctx.skip("the target is not known to run with a cache directory (--target-has-cache)")
        probe = ctx.probe(handshake=case.handshake)
        case.send(probe)
        ctx.expect_closed(probe, case.title)

    return run


def _serves(case):
    def run(ctx: Context) -> None:
        probe = ctx.probe()
        case.send(probe)
        ctx.expect_served(probe, case.title)

    return run


for _case in CASES:
    _rule = _case.spec_rule
    if _rule is None:  # the cases that break no rule are SURVIVAL_CASES
        raise ValueError(f"hostile case {_case.key} names no rule")
    checks.add(Check(f"rule.{_case.key}", _rule.section, f"{_case.title} closes the connection", _closes(_case),
                   level=_case.level, needs=_case.needs, destructive=_case.destructive, advisory=_case.advisory,
                   harmless_from=_case.harmless_from, ops=_case.ops, since=_case.since, rule=_rule.key,
                   kind="security" if _case.advisory not in ("protocol",) else "negative"))

for _case in SURVIVAL_CASES:
    checks.add(Check(f"survive.{_case.key}", _case.section, _case.title, _serves(_case), advisory=_case.advisory,
                   kind="security"))
