"""``make mutation``: mutation testing of the core modules, with the killed share per module.

mutmut (configured in ``[tool.mutmut]`` of pyproject.toml: which modules, which fast tests) runs
in a copy of the tree in a temporary folder, so the checkout gets no ``mutants/`` folder and a
run never reuses stale results. Then this prints, per module, how many mutants the tests killed
(a timeout counts as killed, as mutmut counts it), the equivalent mutants excluded
(``EQUIVALENT`` below, each with why) and every survivor by name (``mutmut show NAME`` in the
kept folder shows its diff).

    python tests/mutation.py [--keep] [--max-children N] [--min 85]

Exit 0 when every module reaches ``--min`` percent, 1 otherwise. Not part of ``make test``: it
runs each module's tests once per mutant (minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("dqlctl", "providers", "engine", "tests", "data", "pyproject.toml")
KILLED = {1, 3, 36, -24, 24, 152, 255}  # mutmut's exit codes: killed, or timed out
SURVIVED = {0}

#: Mutants that cannot change behaviour, so no test can kill them: name -> why. Only a mutant
#: whose every possible effect was checked by hand belongs here, never one a test could catch.
EQUIVALENT: dict[str, str] = {}


def modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "mutants",
                                    "__snapshots__")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def results(work: Path) -> dict[str, dict[str, int]]:
    """``module -> {mutant name: mutmut exit code}`` from the ``.meta`` files mutmut wrote."""
    out: dict[str, dict[str, int]] = {}
    for module in modules():
        meta = work / "mutants" / f"{module}.meta"
        data = json.loads(meta.read_text()) if meta.exists() else {}
        out[module] = dict(data.get("exit_code_by_key", {}))
    return out


def report(by_module: dict[str, dict[str, int]], minimum: float) -> bool:
    ok = True
    print(f"\n{'module':<28} {'killed':>7} {'survived':>9} {'other':>6} {'equiv':>6} {'score':>7}")
    survivors: list[str] = []
    for module, codes in by_module.items():
        equivalent = [m for m in codes if m in EQUIVALENT]
        counted = {m: c for m, c in codes.items() if m not in EQUIVALENT}
        killed = sum(1 for c in counted.values() if c in KILLED)
        survived = [m for m, c in counted.items() if c in SURVIVED]
        other = Counter(c for c in counted.values() if c not in KILLED | SURVIVED)
        tested = killed + len(survived) + sum(other.values())
        score = 100.0 * killed / tested if tested else 0.0
        ok = ok and tested > 0 and score >= minimum
        print(f"{module:<28} {killed:>7} {len(survived):>9} {sum(other.values()):>6} "
              f"{len(equivalent):>6} {score:>6.1f}%" + ("" if score >= minimum else "  < min"))
        if other:
            print(f"    not killed, not survived (mutmut exit code: count): {dict(other)}")
        survivors += sorted(survived)
    if survivors:
        print("\nsurvivors (`mutmut show NAME` in the kept folder shows the change):")
        for name in survivors:
            print(f"  {name}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--min", type=float, default=85.0, help="percent killed each module "
                        "must reach (default 85)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dqlctl-mutation-"))
    started = time.monotonic()
    try:
        copy_tree(work)
        env = {**os.environ, "PYTHONPATH": ""}  # mutmut puts mutants/ first on sys.path
        proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children",
                               str(args.max_children)], cwd=work, env=env, check=False)
        if proc.returncode != 0:
            print(f"mutmut failed (exit {proc.returncode}); see above", file=sys.stderr)
            return 2
        by_module = results(work)
        ok = report(by_module, args.min)
        print(f"\nwall time {time.monotonic() - started:.0f} s"
              + (f"; work folder kept: {work}" if args.keep else ""))
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
