"""The import rules of DESIGN.md ("Three parts, one direction of imports"), checked statically.

Every ``import`` in ``dqlctl/``, ``providers/`` and ``engine/`` is read with ``ast`` (top-level
and inside functions alike; nothing is executed) and resolved to the module it loads:

Imports under ``if TYPE_CHECKING:`` are left out: they never run.

a. a cloud's package (``providers/<cloud>/``) is imported only from inside it: the registries
   name its modules as import strings (tests and bench may import it);
b. ``providers`` imports nothing from ``dqlctl``, ``textual`` or ``engine`` (what the engine and
   the providers share is ``providers.layout``, the contract module);
c. ``engine`` imports nothing from ``dqlctl``, and from ``providers`` only the storage leaf
   (``providers.storage``) and the contract (``providers.layout``);
d. no import cycle among the modules of ``dqlctl`` and ``providers``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dqlctl", "providers", "engine")
#: what the engine may import from providers
ENGINE_MAY_IMPORT = ("providers.storage", "providers.layout")
#: import cycles known and being removed elsewhere, each with who removes it. A cycle is allowed
#: only while its modules are exactly these; any other cycle (or this one grown) fails.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str          # the importing module
    target: str            # the module it loads (the deepest one that exists here)
    line: int

    def __str__(self) -> str:
        return f"{self.importer} imports {self.target} (line {self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """``name`` if it is one of our modules, else its deepest parent that is; else ``name``."""
    probe = name
    while probe and probe not in modules:
        probe = probe.rpartition(".")[0]
    return probe or name


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    typing_only = {id(n) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and _is_type_checking(block)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, _resolve(alias.name, modules), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # ``from pkg import mod`` loads pkg.mod when that is a module
                full = f"{base}.{alias.name}"
                yield Import(module, _resolve(full if full in modules else base, modules),
                             node.lineno)


def _is_type_checking(node: ast.If) -> bool:
    """``if TYPE_CHECKING:``: imports under it are for the type checker and never run."""
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def all_imports() -> list[Import]:
    modules = all_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def _within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def cloud_packages() -> list[str]:
    """Every ``providers/<cloud>/`` holding a compute provider."""
    return sorted(f"providers.{p.parent.name}" for p in (ROOT / "providers").glob("*/compute.py"))


def rule_violations(imports: list[Import]) -> list[str]:
    out = []
    clouds = cloud_packages()
    for imp in imports:
        for cloud in clouds:
            if _within(imp.target, cloud) and not _within(imp.importer, cloud):
                out.append(f"(a) {imp}: only {cloud} itself may import it (registries name it "
                           "as an import string)")
        if _within(imp.importer, "providers") and \
                _within(imp.target, ("dqlctl", "textual", "engine")):
            out.append(f"(b) {imp}: providers never import dqlctl, textual or engine")
        if _within(imp.importer, "engine"):
            if _within(imp.target, "dqlctl"):
                out.append(f"(c) {imp}: the engine never imports dqlctl")
            if _within(imp.target, "providers") and imp.target != "providers" \
                    and not _within(imp.target, ENGINE_MAY_IMPORT):
                out.append(f"(c) {imp}: the engine imports from providers only "
                           f"{' and '.join(ENGINE_MAY_IMPORT)}")
    return out


def import_cycles(imports: list[Import],
                  within: tuple[str, ...]) -> list[tuple[frozenset[str], list[str]]]:
    """The strongly connected components (more than one module, or a module importing itself)
    of the import graph restricted to modules under ``within``: each with one cycle through it."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if _within(imp.importer, within) and _within(imp.target, within):
            graph.setdefault(imp.importer, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan, iterative enough for our module counts
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            comp = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                comp.add(top)
                if top == node:
                    break
            if len(comp) > 1 or node in graph[node]:
                components.append(comp)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [(frozenset(comp), _cycle_through(comp, graph)) for comp in components]


def _cycle_through(comp: set[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle inside the component ``comp`` (a shortest one from its first module)."""
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & comp):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return sorted(comp)  # pragma: no cover - a component always has a cycle


def unexpected_cycles(imports: list[Import]) -> list[str]:
    return [" -> ".join(cycle) + (f" (all in a circle: {', '.join(sorted(comp))})"
                                  if len(comp) > len(cycle) - 1 else "")
            for comp, cycle in import_cycles(imports, ("dqlctl", "providers"))
            if comp not in ALLOWED_CYCLES]


# -- the tests ------------------------------------------------------------------------------------

def test_import_rules_hold() -> None:
    assert rule_violations(all_imports()) == []


def test_no_import_cycles_in_dqlctl_and_providers() -> None:
    assert unexpected_cycles(all_imports()) == []


def test_the_checks_catch_violations() -> None:
    """Each rule fails on a planted violation (so a passing run means something)."""
    planted = [Import("dqlctl.image_cmd", "providers.aws.compute", 1),
               Import("providers.remote_job", "engine.workflow", 1),
               Import("engine.workflow", "providers.vm", 1),
               Import("engine.workflow", "dqlctl.cli", 1),
               Import("providers.gcp.compute", "providers.azure.compute", 1)]
    found = rule_violations(planted)
    assert [v[:3] for v in found] == ["(a)", "(b)", "(c)", "(c)", "(a)"], found
    assert rule_violations([Import("engine.data", "providers.layout", 1),
                            Import("engine.checkpoint", "providers.storage", 1),
                            Import("providers.aws.storage", "providers.storage.base", 1)]) == []
    cycle = unexpected_cycles([Import("providers.sync", "providers.sync_cli", 1),
                               Import("providers.sync_cli", "providers.sync", 2)])
    assert cycle == ["providers.sync -> providers.sync_cli -> providers.sync"]


def test_the_graph_sees_function_level_imports_and_skips_typing_only_ones() -> None:
    modules = all_modules()
    targets = {i.target for i in imports_of("providers.vm", modules["providers.vm"], modules)}
    assert {"providers.ssh", "providers.remote_job"} <= targets   # imported inside methods
    dashboard = "dqlctl.tui.screens.dashboard"
    targets = {i.target for i in imports_of(dashboard, modules[dashboard], modules)}
    assert "dqlctl.tui.models.dashboard" in targets and "dqlctl.tui.app" not in targets


# -- the registries: names to import strings, a cloud's parts load apart -------------------------

REGISTRY_PROBE = """
import json, sys
import providers, providers.storage, providers.prices.refresh
before = sorted(sys.modules)
from providers.storage import store_class
for scheme in ("s3", "gs", "az"):
    store_class(scheme)
print(json.dumps({"before": before, "after": sorted(sys.modules),
                  "compute": providers.COMPUTE_PROVIDERS, "stores": providers.storage.STORES,
                  "prices": providers.prices.refresh.MODULES}))
"""


def test_registries_name_each_clouds_modules_and_storage_loads_without_compute() -> None:
    proc = subprocess.run([sys.executable, "-c", REGISTRY_PROBE], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    clouds = cloud_packages()
    assert not [m for m in got["before"] if _within(m, tuple(clouds))]  # nothing loaded yet
    for registry in ("compute", "stores", "prices"):
        for target in got[registry].values():
            module = target.partition(":")[0]
            assert _within(module, tuple(clouds)) or module == "providers.storage.local", module
    loaded = [m for m in got["after"] if _within(m, tuple(clouds))]
    assert "providers.aws.storage" in loaded
    assert not [m for m in loaded if not m.endswith(".storage") and m not in clouds], loaded
    heavy = [m for m in got["after"] if _within(m, ("boto3", "google.cloud", "azure"))]
    assert heavy == []      # a store class loads its SDK when a store is opened, not before
