"""docs/RELIABILITY.md and tests/reliability/ agree: one table row per test, one test per row."""

from __future__ import annotations

import ast
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABLE = HERE.parent.parent / "docs" / "RELIABILITY.md"
ROW_TEST = re.compile(r"`(tests/reliability/test_\w+\.py::test_\w+)`\s*\|\s*$")


def table_tests(text: str) -> list[str]:
    """The test each table row names (``path::function``), in order; a row's last cell names its test."""
    rows = [line for line in text.splitlines() if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line)]
    named = []
    for line in rows:
        if line.startswith("| Situation "):
            continue
        match = ROW_TEST.search(line)
        assert match, f"a table row names no test in its last cell: {line[:120]}"
        named.append(match.group(1))
    return named


def suite_tests() -> set[str]:
    """Every ``test_*`` function defined at module level in tests/reliability/ (this module excepted)."""
    found = set()
    for path in sorted(HERE.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found.add(f"tests/reliability/{path.name}::{node.name}")
    return found


def test_table_and_tests_agree() -> None:
    named = table_tests(TABLE.read_text(encoding="utf-8"))
    duplicates = sorted({test for test in named if named.count(test) > 1})
    assert not duplicates, f"tests named by more than one row: {duplicates}"
    tests = suite_tests()
    assert len(named) >= 50
    assert set(named) - tests == set(), f"rows naming no existing test: {sorted(set(named) - tests)}"
    assert tests - set(named) == set(), f"tests without a row in docs/RELIABILITY.md: {sorted(tests - set(named))}"


def test_table_parser_sees_a_missing_row(tmp_path: Path) -> None:
    """The check can fail: a row dropped from the table is a test without a row."""
    text = TABLE.read_text(encoding="utf-8")
    dropped = "\n".join(line for line in text.splitlines() if "::test_zero_byte_png`" not in line)
    assert "tests/reliability/test_data.py::test_zero_byte_png" in suite_tests() - set(table_tests(dropped))
