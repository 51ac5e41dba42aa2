"""SPEC.md is generated from the schemas: stale tables fail here, as do rules citing no section."""

from __future__ import annotations

import re
from pathlib import Path

from ggml_rpc_spec.protocol.rules import RULES
from tools.generate_spec import SPEC, render


def test_spec_tables_are_fresh():
    current = SPEC.read_text()
    assert render(current) == current, "SPEC.md is stale: run `python tools/generate_spec.py`"


def test_every_rule_cites_an_existing_section():
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?) ", SPEC.read_text(), re.M))
    for rule in RULES:
        assert rule.section in headings, f"{rule.key} cites §{rule.section}, which SPEC.md lacks"


def test_case_ids_cite_sections():
    for rule in RULES:
        assert rule.case_id.startswith(f"§{rule.section} ")


def test_spec_states_the_real_sizes():
    text = Path(SPEC).read_text()
    assert "Total: **296 bytes**." in text  # rpc_tensor
    assert "| 13 | GET_ALLOC_SIZE | §5.5 | 3260 | 8 | 3.6.0 – 7.0.0 |" in text
    assert "| 6 | SET_TENSOR | §7.1 | 305 + tail | none | 7.0.0 |" in text
