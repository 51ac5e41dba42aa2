"""The package passes mypy as pyproject.toml's [tool.mypy] configures it: a type error fails here,
with mypy's report in the message, before it reaches a user."""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_type_checks(monkeypatch):
    # the config's paths (mypy_path = "src") are relative to the working directory: from the
    # checkout's root mypy reads this tree's sources, not an installed copy of the package
    monkeypatch.chdir(ROOT)
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml")])
    assert status == 0, f"mypy reports type errors (exit {status}):\n{stdout}{stderr}"
