"""The suite's cases, one module per kind; this is the one place that lists them.

Each module declares its checks in a `Checks` of its own; `all_checks()` joins them in the
order below and makes sure no two share a key.
"""

from __future__ import annotations

from ..core import Check
from . import diff_fuzz, frame_fuzz, graphs, hostile_fuzz, link, negative, traces, wire

MODULES = (wire, negative, graphs, link, traces, frame_fuzz, hostile_fuzz, diff_fuzz)


def all_checks() -> tuple[Check, ...]:
    """Every check of the suite."""
    found: dict[str, Check] = {}
    for module in MODULES:
        for item in module.checks.items:
            if item.key in found:
                raise ValueError(f"two checks with key {item.key!r} ({module.__name__})")
            found[item.key] = item
    return tuple(found.values())
