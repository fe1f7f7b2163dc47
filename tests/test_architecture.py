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


# Top to bottom: a unit (a package, or a module directly in terrafs/) imports only units below it.
LAYERS = ["__main__", "cli", "mount", "archivefs", "build", "openfiles", "tree", "read", "cache", "remote",
          "config", "config_schema", "catalogue", "localfs", "counters", "text", "errors", "__version__"]
ASIDE = {"emulator"}  # a separate service: imports only itself; only the CLI starts it


def _imports_by_unit() -> dict[str, set[str]]:
    import ast

    out: dict[str, set[str]] = {}
    for path in (REPO / "terrafs").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        unit = parts[1] if len(parts) > 1 and parts[1] != "__init__" else "__init__"
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "terrafs":
                    names = [a.name for a in node.names]
                elif node.module.startswith("terrafs."):
                    names = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("terrafs.")]
            out.setdefault(unit, set()).update(n for n in names if n != unit)
    return out


def test_each_package_imports_only_the_ones_below_it():
    wrong = []
    for unit, targets in _imports_by_unit().items():
        if unit == "__init__":
            continue
        for target in targets:
            if unit in ASIDE or target in ASIDE:
                if not (unit == "cli" and target in ASIDE):
                    wrong.append(f"{unit} -> {target}")
            elif unit not in LAYERS or target not in LAYERS or LAYERS.index(target) <= LAYERS.index(unit):
                wrong.append(f"{unit} -> {target}")
    assert not wrong, "imports against the layering (README, Development):\n" + "\n".join(sorted(wrong))


def test_at_most_twelve_modules_directly_in_terrafs():
    top = sorted(p.name for p in (REPO / "terrafs").glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(top) <= 12, top
