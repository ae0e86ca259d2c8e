"""docs/reliability.md is the table of the declared cases, and every declared case has a test."""

from __future__ import annotations

import importlib
from pathlib import Path

from reliability_cases import BY_ID, CASES, COVERED, TABLE_PATH, THEMES, render_table

SUITE = sorted(path.stem for path in Path(__file__).parent.glob("test_reliability_*.py"))


def test_every_case_has_a_test() -> None:
    for name in SUITE:
        importlib.import_module(name)  # each test registers the cases it covers when its module loads
    untested = [case.id for case in CASES if not COVERED.get(case.id)]
    assert not untested, f"declared in reliability_cases.py but tried by no test: {untested}"


def test_cases_are_declared_once_under_a_known_theme() -> None:
    assert len(BY_ID) == len(CASES), "a case id is declared twice"
    assert {case.theme for case in CASES} == set(THEMES)


def test_the_committed_table_is_the_generated_one() -> None:
    assert TABLE_PATH.read_text(encoding="utf-8") == render_table(), (
        "docs/reliability.md is out of date: run `.venv/bin/python tests/reliability_cases.py`"
    )
