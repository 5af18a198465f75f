"""The engine's CPU image: its size, and how long ``dqlctl image build`` takes cold (an empty
image store: only the base image is there) and warm (the same sources again: every layer from
the cache), offline (``--wheels``), with podman. Also a container's start: ``dql-trading
--help`` in the image, against the same command natively (the baseline, same run).

    python bench/image_build.py

Needs podman, runc and debootstrap (``make install-dev``); the base image and the wheels come
from tests/containers.py (cached in .deps/containers). Nothing outside a temporary folder is
changed; the cached base and wheels are reused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import containers  # noqa: E402


def build(env: dict[str, str], base: str, wheels: Path) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-m", "dqlctl", "image", "build", "--cpu", "--engine",
                           "podman", "--base", base, "--wheels", str(wheels), "--tag",
                           "dqlctl-engine:bench", "--json"], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"build failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout))


def wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> int:
    missing = containers.tools_missing()
    if missing:
        raise SystemExit(f"missing {missing}: make install-dev installs them")
    with tempfile.TemporaryDirectory(prefix="dqlctl-image-bench-") as tmp:
        env = containers.podman_env(Path(tmp) / "conf", Path(tmp) / "storage")
        base = containers.base_image(env)
        wheels = containers.engine_wheels()
        cold = build(env, base, wheels)
        warm = build(env, base, wheels)
        boxed = min(wall(["podman", "run", "--rm", "--init", "dqlctl-engine:bench", "--help"], env)
                    for _ in range(3))
        native = min(wall([sys.executable, "-m", "engine", "--help"], {}) for _ in range(3))
        driver = Path(env["CONTAINERS_STORAGE_CONF"]).read_text().split('"')[1]
        containers.podman(env, "rmi", "--all", "--force", check=False)
    size = int(cold["size_bytes"] or 0)  # type: ignore[call-overload]
    print(f"engine image (CPU, offline build, podman, {driver} storage): {size / 1e9:.2f} GB")
    print(f"  build cold  {cold['seconds']:>6} s")
    print(f"  build warm  {warm['seconds']:>6} s   (ratio warm/cold {float(warm['seconds']) / float(cold['seconds']):.2f})")  # type: ignore[arg-type]
    print(f"  `dql-trading --help` in the container {boxed:.2f} s, native {native:.2f} s "
          f"(ratio {boxed / native:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
