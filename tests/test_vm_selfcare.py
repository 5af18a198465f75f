"""The supervisor takes care of the machine it runs on: once the engine has ended it shuts the
machine down (a collector's ``collected`` marker, the end grace, the idle minutes), never with
``--keep`` alone, and it deletes the secrets file as soon as it has read it.

The supervisor runs here as it does on a VM (``python -m providers.local.supervisor``, its own
session); the shutdown command is a script that records its call. Every wait polls with a
deadline; nothing depends on timing but the grace the test itself gives.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fake_shutdown(tmp_path: Path) -> Path:
    script = tmp_path / "shutdown"
    script.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      f"with open({str(tmp_path / 'shutdown.log')!r}, 'a') as fh:\n"
                      "    fh.write(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(),\n"
                      "                         'env': dict(os.environ)}) + '\\n')\n")
    script.chmod(0o755)
    return script


def supervise(workdir: Path, *flags: str, engine: list[str] | None = None) -> subprocess.Popen[
        bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "providers.local.supervisor", f"--workdir={workdir}",
         "--tag=dqlctl:run=selfcare-test", *flags, "--",
         *(engine or [sys.executable, "-c", "pass"])],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def shutdowns(tmp_path: Path) -> list[dict[str, object]]:
    log = tmp_path / "shutdown.log"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def test_the_end_grace_shuts_the_machine_down(tmp_path: Path) -> None:
    script = fake_shutdown(tmp_path)
    work = tmp_path / "run"
    proc = supervise(work, f"--shutdown-command={script} -h now", "--end-grace=0.2",
                     "--idle-minutes=30")
    assert proc.wait(timeout=60) == 0
    (call,) = shutdowns(tmp_path)
    assert call["argv"] == ["-h", "now"] and call["cwd"] == str(work)
    care = json.loads((work / "selfcare.json").read_text())
    assert care["reason"].startswith("run ended") and care["returncode"] == 0
    assert json.loads((work / "exit.json").read_text())["exit_code"] == 0


def test_a_collector_says_shut_down_now(tmp_path: Path) -> None:
    """A long grace (results on the VM's disk): the collector's marker ends it at once."""
    script = fake_shutdown(tmp_path)
    work = tmp_path / "run"
    proc = supervise(work, f"--shutdown-command={script}", "--end-grace=3600")
    wait_for(work / "exit.json")
    assert proc.poll() is None and shutdowns(tmp_path) == []  # waiting for its collector
    (work / "collected").touch()
    assert proc.wait(timeout=60) == 0
    assert len(shutdowns(tmp_path)) == 1
    assert json.loads((work / "selfcare.json").read_text())["reason"] == "collected"


def test_kept_machines_wait_only_for_the_idle_limit(tmp_path: Path) -> None:
    script = fake_shutdown(tmp_path)
    kept = supervise(tmp_path / "kept", "--idle-minutes=0.005")  # --keep --idle-minutes
    assert kept.wait(timeout=60) == 0  # no shutdown command: nothing to do, exits at once
    work = tmp_path / "run"
    proc = supervise(work, f"--shutdown-command={script}", "--idle-minutes=0.005")
    wait_for(work / "exit.json")
    (work / "collected").touch()  # no end rule (--keep): the marker changes nothing
    assert proc.wait(timeout=60) == 0
    (call,) = shutdowns(tmp_path)
    assert json.loads((work / "selfcare.json").read_text())["reason"].startswith("no engine")


def test_a_failing_engine_and_a_failing_shutdown_are_both_recorded(tmp_path: Path) -> None:
    work = tmp_path / "run"
    proc = supervise(work, "--shutdown-command=/nonexistent/shutdown", "--end-grace=0",
                     engine=[sys.executable, "-c", "raise SystemExit(3)"])
    assert proc.wait(timeout=60) == 0
    assert json.loads((work / "exit.json").read_text())["exit_code"] == 3
    care = json.loads((work / "selfcare.json").read_text())
    assert care["engine_exit_code"] == 3 and "nonexistent" in care["error"]


def test_the_secrets_file_is_gone_once_read_and_the_engine_has_them(tmp_path: Path) -> None:
    work = tmp_path / "run"
    work.mkdir()
    secrets = work / "secrets.env"
    secrets.write_text("TELEGRAM_BOT_TOKEN=123:abc=def\nOTHER=x y\n")
    secrets.chmod(0o600)
    probe = ("import json, os; json.dump({k: os.environ.get(k) for k in "
             "('TELEGRAM_BOT_TOKEN', 'OTHER')}, open('seen.json', 'w')); "
             "assert not os.path.exists('secrets.env')")
    proc = supervise(work, f"--env-file={secrets}", "--remove-env-file",
                     engine=[sys.executable, "-c", probe])
    assert proc.wait(timeout=60) == 0
    assert json.loads((work / "exit.json").read_text())["exit_code"] == 0
    assert json.loads((work / "seen.json").read_text()) == {"TELEGRAM_BOT_TOKEN": "123:abc=def",
                                                           "OTHER": "x y"}
    assert not secrets.exists()


def test_container_options_come_from_the_supervisor(tmp_path: Path) -> None:
    import os

    from providers.local.supervisor import container_command

    cmd = ["docker", "run", "--rm", "img", "train"]
    user = f"--user={os.getuid()}:{os.getgid()}"
    assert container_command(cmd, ["A", "B"], "all") == [
        "docker", "run", user, "--env=A", "--env=B", "--gpus=all", "--rm", "img", "train"]
    assert container_command(cmd, [], "none") == ["docker", "run", user, "--rm", "img", "train"]


def test_a_vm_that_cannot_delete_itself_shuts_down_instead(tmp_path: Path) -> None:
    """``--self-delete``: the cloud is asked first (here its metadata server does not answer),
    and the shutdown command runs as the fallback; both are recorded."""
    import os

    script = fake_shutdown(tmp_path)
    work = tmp_path / "run"
    work.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "providers.local.supervisor", f"--workdir={work}",
         "--tag=dqlctl:run=selfcare-test", f"--shutdown-command={script} -h now",
         "--self-delete=gcp", "--end-grace=0.1", "--", sys.executable, "-c", "pass"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT),
             "DQLCTL_GCE_METADATA_URL": "http://127.0.0.1:9"})   # nothing listens there
    assert proc.wait(timeout=120) == 0
    (call,) = shutdowns(tmp_path)
    assert call["argv"] == ["-h", "now"]
    care = json.loads((work / "selfcare.json").read_text())
    assert care["self_delete"] == {"cloud": "gcp", "returncode": 1, "error": None}
    assert care["returncode"] == 0
