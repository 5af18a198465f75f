"""`dqlctl image push` through the provider verb ``push_image`` (capability IMAGE_REGISTRY).

AWS pushes to ECR (moto) with a stand-in container engine: a script named ``docker`` that
records what it was asked and answers like docker. Providers without a registry are refused with
the list of those that have one.
"""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest

from dqlctl.cli import main
from dqlctl.context import Context
from providers import capabilities_of, provider_class, provider_names
from providers.base import Capability, ImageRegistry

FAKE_ENGINE = """#!/bin/sh
echo "$@" >> "{log}"
case "$1" in
  info) exit 0 ;;
  login) cat > "{log}.stdin"; exit 0 ;;
  image) case "$4" in
           "{{{{.Id}}}} {{{{.Size}}}}") echo "sha256:feedbeef 1234567890" ;;
           *) printf '["%s@sha256:0123abcd"]\n' "${{5%:*}}" ;;
         esac; exit 0 ;;
  push) echo "pushing $2"; exit {push_rc} ;;
esac
exit 0
"""


def fake_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, push_rc: int = 0) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "engine.log"
    script = bin_dir / "docker"
    script.write_text(FAKE_ENGINE.format(log=log, push_rc=push_rc))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return log


def run(argv: list[str], home: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, Context(home=home, stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def test_registry_capability_means_the_verb() -> None:
    for name in provider_names():
        if Capability.IMAGE_REGISTRY in capabilities_of(name):
            assert issubclass(provider_class(name), ImageRegistry)
    assert {"aws", "gcp", "azure"} <= {n for n in provider_names()
                                       if Capability.IMAGE_REGISTRY in capabilities_of(n)}


def test_push_to_a_provider_without_a_registry_names_those_with_one(tmp_path: Path) -> None:
    code, _, err = run(["image", "push", "--provider", "local"], tmp_path)
    assert code == 2
    assert "not available" in err and "providers that can: aws, azure, gcp" in err
    code, _, err = run(["image", "push", "--provider", "nosuch"], tmp_path)
    assert code == 2 and "unknown provider 'nosuch'" in err


def test_push_to_ecr_json(tmp_path: Path, aws_env: str,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_engine(tmp_path, monkeypatch)
    code, out, err = run(["image", "push", "--json", "--region", "us-east-1"], tmp_path)
    assert code == 0, err
    pushed = json.loads(out)
    assert pushed["provider"] == "aws" and pushed["tag"] == "latest"
    assert pushed["repository"].endswith("/dqlctl-engine")
    assert pushed["reference"] == pushed["repository"] + ":latest"
    assert pushed["digest"] == "sha256:0123abcd"
    assert pushed["pinned"] == pushed["repository"] + "@sha256:0123abcd"
    calls = log.read_text()
    assert f"push {pushed['reference']}" in calls
    password = Path(f"{log}.stdin").read_text()
    assert password and password not in calls          # the token went on stdin only
    # a second push finds the repository
    code, out, _ = run(["image", "push", "--region", "us-east-1"], tmp_path)
    assert code == 0 and out.startswith(f"pushed {pushed['reference']} (sha256:0123abcd)")


def test_failed_push_exits_1(tmp_path: Path, aws_env: str,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    fake_engine(tmp_path, monkeypatch, push_rc=1)
    code, _, err = run(["image", "push", "--region", "us-east-1"], tmp_path)
    assert code == 1 and "`docker push` failed" in err


def test_build_runs_the_engine_on_a_context_of_its_own(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`image build --cpu --engine docker --json`: the engine builds the Dockerfile in a build
    context of dqlctl's making (the project's files, an empty wheels/ folder), CPU-only torch
    with --cpu; the JSON says what was built, its id and size."""
    log = fake_engine(tmp_path, monkeypatch)
    code, out, err = run(["image", "build", "--cpu", "--engine", "docker", "--json"], tmp_path)
    assert code == 0, err
    built = json.loads(out)
    assert {k: built[k] for k in ("tag", "engine", "cpu", "base", "offline", "id",
                                  "size_bytes")} == {
        "tag": "dqlctl-engine:latest", "engine": "docker", "cpu": True, "base": None,
        "offline": False, "id": "sha256:feedbeef", "size_bytes": 1234567890}
    (build,) = [line.split() for line in log.read_text().splitlines()
                if line.startswith("build")]
    context = Path(build[-1])
    assert build[:4] == ["build", "-t", "dqlctl-engine:latest", "-f"]
    assert build[4:] == [str(context / "Dockerfile"), "--build-arg", "VARIANT=cpu", str(context)]
    assert not context.exists()        # a temporary folder, gone after the build
    code, out, _ = run(["image", "build", "--tag", "mine:1", "--base", "localhost/deb:12"],
                       tmp_path)
    assert code == 0 and out.startswith("built mine:1 with docker: 1.23 GB, sha256:feedbeef (")
    build = [line.split() for line in log.read_text().splitlines() if line.startswith("build")][-1]
    assert build[5:7] == ["--build-arg", "BASE=localhost/deb:12"]


def test_an_offline_build_context_holds_the_wheels_and_the_project(tmp_path: Path) -> None:
    """What the Dockerfile's COPY and bind mount find: the project's files without caches, and
    the wheels (hard links, not copies, where they can be)."""
    from dqlctl.image_cmd import ROOT
    from providers.containers import BUILD_CONTEXT, build_context

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0-cp311-none-any.whl").write_bytes(b"wheel")
    (wheels / "notes.txt").write_text("not a wheel")
    context = build_context(ROOT, tmp_path / "ctx", wheels)
    assert sorted(p.name for p in context.iterdir()) == sorted([*BUILD_CONTEXT, "wheels"])
    assert [p.name for p in (context / "wheels").iterdir()] == ["torch-2.13.0-cp311-none-any.whl"]
    assert (context / "wheels" / "torch-2.13.0-cp311-none-any.whl").stat().st_ino == \
        (wheels / "torch-2.13.0-cp311-none-any.whl").stat().st_ino
    assert not list(context.rglob("__pycache__"))
    assert (context / "engine" / "cli.py").read_bytes() == (ROOT / "engine" / "cli.py").read_bytes()


def test_an_empty_wheels_folder_is_refused_before_any_build(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_engine(tmp_path, monkeypatch)
    (tmp_path / "none").mkdir()
    code, out, err = run(["image", "build", "--wheels", str(tmp_path / "none")], tmp_path)
    assert (code, out) == (2, "")
    assert err.startswith(f"dqlctl: error: --wheels {tmp_path / 'none'}: no *.whl files there")
    assert not log.exists()


def test_a_failed_build_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_engine(tmp_path, monkeypatch)
    script = log.parent / "bin" / "docker"
    script.write_text(script.read_text().replace("esac", "  build) exit 7 ;;\nesac"))
    code, out, err = run(["image", "build", "--engine", "docker"], tmp_path)
    assert (code, out) == (1, "")
    assert err == "dqlctl: error: docker build failed (exit 7)\n"
