"""The house rules that a change can break without any other test noticing (issue 22): no import
cycle in terrafs/ (imports in functions and under TYPE_CHECKING count), no module of terrafs/ over
400 lines (the emulator included), and no test that imports a private name of terrafs or reads a
private attribute of a project object. Pure: it reads the sources (scripts/house/ has the tools).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOUSE = REPO / "scripts" / "house"
MAX_LINES = 400


def _tool(name: str) -> list[str]:
    out = subprocess.run([sys.executable, str(HOUSE / name), str(REPO)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_no_import_cycle_in_terrafs():
    lines = _tool("import_cycles.py")
    assert lines == ["SCCs: []"], "\n".join(lines)


def test_no_module_of_terrafs_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in sorted((REPO / "terrafs").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_test_uses_a_private_name_of_terrafs():
    found = [line for line in _tool("private_names.py") if line.split()[1].startswith("tests/")]
    assert not found, "\n".join(found)
