"""The TUI, end-to-end and checkpoint tests under load and in random order, N rounds.

Each round starts two busy loops (``python -c "while True: pass"``, one core each: the load of a
shared 2-core CI machine), runs the files in an order shuffled from the round's seed, with
pytest-randomly shuffling the tests inside them from the same seed where it is installed
(``-p pytest_randomly --randomly-seed=SEED``; pyproject's ``-p no:randomly`` keeps it off
otherwise; without the plugin only the files are shuffled), then kills the loops. Per round it prints the seed, passed/failed and the wall time;
a failed round's seed reruns it in the same order (``--seed SEED --rounds 1``).

    python tests/stress.py [--rounds 5] [--seed S] [--busy 2] [FILE ...]

Without FILEs: tests/test_tui*.py, tests/test_*_e2e.py and tests/test_engine_checkpoint.py.
Exit 0 when every round passed. Not part of ``make test`` (each round takes minutes).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUSY = "while True: pass"


def default_files() -> list[str]:
    tests = ROOT / "tests"
    found = {*tests.glob("test_tui*.py"), *tests.glob("test_*_e2e.py"),
             tests / "test_engine_checkpoint.py"}
    return sorted(str(p.relative_to(ROOT)) for p in found if p.is_file())


def has_randomly() -> bool:
    return importlib.util.find_spec("pytest_randomly") is not None


def pytest_argv(files: list[str], seed: int, randomly: bool) -> list[str]:
    """The pytest command of one round: ``files`` in the seed's order."""
    order = list(files)
    random.Random(seed).shuffle(order)
    plugin = ["-p", "pytest_randomly", f"--randomly-seed={seed}"] if randomly else []
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, *order]


def counts(output: str) -> dict[str, int]:
    """pytest's last summary line as ``{"passed": n, "failed": n, ...}``."""
    summary = next((line for line in reversed(output.splitlines())
                    if re.search(r"\b(passed|failed|error|errors|no tests ran)\b", line)), "")
    return {word.rstrip("s") if word != "passed" else word: int(n)
            for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed)",
                                      summary)}


def run_round(files: list[str], seed: int, busy: int, randomly: bool) -> tuple[bool, str]:
    """One round under ``busy`` busy loops; (passed, pytest's output)."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.DEVNULL)
             for _ in range(busy)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    try:
        proc = subprocess.run(pytest_argv(files, seed, randomly), cwd=ROOT, env=env,
                              capture_output=True, text=True, check=False)
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait()
    return proc.returncode == 0, proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="test files (default: TUI, e2e, checkpoint)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, help="the first round's seed (default: random); "
                        "round i uses seed + i")
    parser.add_argument("--busy", type=int, default=2, help="busy loops per round (default 2)")
    args = parser.parse_args(argv)
    files = args.files or default_files()
    first = args.seed if args.seed is not None else random.SystemRandom().randrange(10**9)
    randomly = has_randomly()
    print(f"{len(files)} files, {args.rounds} rounds, {args.busy} busy loops, order: files "
          f"shuffled{' + pytest-randomly' if randomly else ' (pytest-randomly not installed)'}",
          flush=True)
    failed_rounds = []
    for i in range(args.rounds):
        seed = first + i
        started = time.monotonic()
        ok, output = run_round(files, seed, args.busy, randomly)
        wall = time.monotonic() - started
        c = counts(output)
        print(f"round {i + 1}: seed {seed}: {'ok' if ok else 'FAILED'}: "
              f"{c.get('passed', 0)} passed, {c.get('failed', 0)} failed"
              + (f", {c['error']} errors" if c.get("error") else "")
              + f"; {wall:.0f} s", flush=True)
        if not ok:
            failed_rounds.append(seed)
            tail = output.strip().splitlines()[-60:]
            print("\n".join("    " + line for line in tail), flush=True)
    if failed_rounds:
        print(f"failed rounds' seeds: {' '.join(map(str, failed_rounds))} (rerun one: "
              f"python tests/stress.py --rounds 1 --seed SEED {' '.join(args.files)})".rstrip())
        return 1
    print(f"all {args.rounds} rounds passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
