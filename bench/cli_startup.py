"""Start-up time of the control center: median wall time of ``dqlctl --help`` and ``dqlctl ps``
next to the interpreter floor (``python -c pass``), each a fresh process.

    python bench/cli_startup.py [--runs 15]

Target (issue 2): under 0.15 s above the floor. SkyPilot's ``import sky`` alone costs about 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def median_wall(argv: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    env = {**os.environ, "DQLCTL_HOME": tempfile.mkdtemp(prefix="dqlctl-bench-")}
    py = sys.executable
    cases = {
        "python -c pass (floor)": [py, "-c", "pass"],
        "dqlctl --help": [py, "-m", "dqlctl", "--help"],
        "dqlctl ps": [py, "-m", "dqlctl", "ps"],
    }
    for argv in cases.values():  # warm the page cache and .pyc files
        subprocess.run(argv, env=env, capture_output=True, check=False)
    results = {name: median_wall(argv, args.runs, env) for name, argv in cases.items()}
    floor = results["python -c pass (floor)"]
    print(f"median of {args.runs} runs, fresh process each")
    for name, t in results.items():
        extra = "" if t is floor else f"   +{t - floor:.3f} s above floor  ({t / floor:.2f}x)"
        print(f"  {name:<26} {t:.3f} s{extra}")
    over = results["dqlctl --help"] - floor
    print(f"target: --help under 0.150 s above the floor -> {'met' if over < 0.15 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
