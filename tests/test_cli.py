"""The command line as a whole: one module per verb, ``dqlctl tui [RUN]``, ``--debug``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dqlctl.cli import build_parser, main
from dqlctl.context import Context
from dqlctl.verbs import VERB_MODULES

ROOT = Path(__file__).resolve().parents[1]


def test_every_verb_module_registers_its_verb() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    verbs = list(sub.choices)  # type: ignore[attr-defined]
    assert verbs == ["launch", "ps", "show", "logs", "down", "gc", "stop", "ssh", "check", "image",
                     "cost", "profile", "sync", "sweep", "tui"]
    assert len(VERB_MODULES) == len(verbs)
    for verb, parser in sub.choices.items():  # type: ignore[attr-defined]
        if verb != "image":  # `image` has actions below it, each with its func
            assert callable(parser.get_default("func")), verb


@pytest.mark.parametrize("argv,expected", [(["tui"], {}), (["tui", "abc123"], {"run": "abc123"})])
def test_tui_verb_opens_the_control_center_on_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str],
        expected: dict[str, Any]) -> None:
    import dqlctl.tui

    calls: list[tuple[Any, dict[str, Any]]] = []

    def fake_run_tui(ctx: Any = None, **kwargs: Any) -> int:
        calls.append((ctx, kwargs))
        return 0

    monkeypatch.setattr(dqlctl.tui, "run_tui", fake_run_tui)
    ctx = Context(home=tmp_path)
    assert main(argv, ctx=ctx) == 0
    assert calls == [(ctx, expected)]


def test_debug_logs_the_sdk_calls_at_debug_and_no_secret(tmp_path: Path) -> None:
    """``--debug``: botocore's DEBUG records on stderr (here for a call to an endpoint where
    nothing answers); the secret key is not among them."""
    pytest.importorskip("botocore")
    secret = "dqlctl-test-secret-must-not-show"
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "DQLCTL_HOME": str(tmp_path),
           "AWS_ACCESS_KEY_ID": "AKIDDQLCTLTEST", "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    proc = subprocess.run([sys.executable, "-m", "dqlctl", "--debug", "check", "aws"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    debug = [line for line in proc.stderr.splitlines() if " botocore" in line and " DEBUG " in line]
    assert debug, proc.stderr[-2000:]
    assert secret not in proc.stderr + proc.stdout
    quiet = subprocess.run([sys.executable, "-m", "dqlctl", "check", "aws"],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert quiet.returncode == 3 and " DEBUG " not in quiet.stderr
