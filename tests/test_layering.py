"""Imports run one way: the domain package ``atm_fl`` never imports the plugin or app layers."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPPER = ("strategies", "clients", "experiments", "tests")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_domain_never_imports_the_plugin_layer():
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] in UPPER)
                 for p in (ROOT / "atm_fl").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from strategies.atm import ATMStrategy\n")
    assert "strategies.atm" in imported_modules(bad)
