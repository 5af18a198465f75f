"""`dqlctl --help` and headless verbs must start fast: nothing heavy is imported before it is needed.

Also checks the one direction of imports (DESIGN.md): engine never imports dqlctl, providers never
imports dqlctl or textual.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("textual", "torch", "pandas", "numpy", "boto3", "botocore", "google.cloud", "azure",
         "paramiko", "matplotlib", "gymnasium")

PROBE = """
import json, sys
from dqlctl.cli import main
try:
    code = main({argv!r})
except SystemExit as exc:
    code = exc.code
print("@@MODULES@@" + json.dumps(sorted(sys.modules)))
"""


def loaded_modules(argv: list[str], env_home: Path) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True,
                          text=True, cwd=ROOT, env={"DQLCTL_HOME": str(env_home), "PATH": "/usr/bin"},
                          timeout=60)
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@MODULES@@")]
    assert marker, proc.stdout + proc.stderr
    return json.loads(marker[0][len("@@MODULES@@"):])


@pytest.mark.parametrize("argv", [["--help"], ["ps"], ["ps", "--all", "--json"], ["launch", "--help"],
                                  ["show", "nosuchrun"], ["logs", "nosuchrun"]])
def test_headless_verbs_import_nothing_heavy(argv: list[str], tmp_path: Path) -> None:
    modules = loaded_modules(argv, tmp_path)
    heavy = [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == [], f"`dqlctl {' '.join(argv)}` imported {heavy}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package,forbidden", [("engine", ("dqlctl",)),
                                               ("providers", ("dqlctl", "textual"))])
def test_one_direction_of_imports(package: str, forbidden: tuple[str, ...]) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported at a module's top (not inside functions or TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_entry_point_imports_the_cli() -> None:
    """``dqlctl.cli`` parses and dispatches; verbs, the core and the TUI never import it."""
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "dqlctl").rglob("*.py"))
                 if p.name != "__main__.py" and "dqlctl.cli" in _imports(p)]
    assert offenders == []


def test_verb_modules_import_only_the_standard_library_at_their_top() -> None:
    from dqlctl.verbs import VERB_MODULES

    light = ("dqlctl.errors", "dqlctl.render", "dqlctl.verbs")
    offenders = []
    for module in VERB_MODULES:
        path = ROOT / (module.replace(".", "/") + ".py")
        for name in _top_level_imports(path):
            top = name.split(".")[0]
            if name in light or (top in sys.stdlib_module_names or top == "__future__"):
                continue
            offenders.append(f"{module} imports {name}")
    assert offenders == []
