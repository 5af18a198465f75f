"""Nothing hostile runs on the VM: every value that reaches it is data, never shell.

Hostile strings (command substitution, backticks, ``;``, ``&&``, ``|``, newlines, quotes,
``${IFS}``, globs, redirections, leading dashes, unicode) go through every value that reaches the
VM: engine arguments, the data file's name, the results place, the engine image, the experiment
name, env values (and names), the run id. Each payload would create a file in a "pwned" folder if
a shell ever ran it; the tests assert that folder stays empty and that the engine (or ``docker``)
received exactly the strings given. ``hypothesis`` is not in the venv, so the strings come from a
seeded generator of hand-made fragments.

The unit property test runs the very line ``start_remote_job`` sends (``launch_line``) with
``bash -c`` in a temporary folder; the e2e case sends it over SSH to the sshd stand-in VM.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.base import JobSpec, LaunchSpec, ProviderError, SshTarget
from providers.remote_job import SelfCare, engine_argv, launch_line, start_remote_job
from tests.vm import vm_sshd

ROOT = Path(__file__).resolve().parents[1]

# what the fake engine does: write its argv and environment where it was started (its workdir)
RECORDER = ("import json, os, sys\n"
            "with open('engine-record.json', 'w') as fh:\n"
            "    json.dump({'argv': sys.argv[1:], 'env': dict(os.environ)}, fh)\n")


def fragments(pwned: Path) -> list[str]:
    touch = f"touch {pwned}/x"
    return [f"$({touch})", f"`{touch}`", f"; {touch}", f"&& {touch}", f"| {touch}",
            f"\n{touch}\n", f"'; {touch}; '", f'"; {touch}; "', f"\\'$({touch})",
            f"${{IFS}}{touch.replace(' ', '${IFS}')}", f"$({touch.replace(' ', '${IFS}')})",
            f"> {pwned}/redirected", f">{pwned}/r2", "*", "?", "[a-z]*", "~root", "{a,b}",
            "$((6*7))", "!!", "$HOME", "${PATH}", "-rf", "--help", "--data_file=/etc/passwd",
            "é中文 ✓ ¬", "tab\there", "  spaces  ", "'", '"', "\\", "&", "#comment", "%s%n"]


def hostile(rng: random.Random, pwned: Path, *, newline: bool = True, slash: bool = True,
            dash: bool = True) -> str:
    """One hostile string: 1-3 fragments, sometimes wrapped in ordinary text."""
    parts = rng.sample(fragments(pwned), rng.randint(1, 3))
    text = rng.choice(["", "run-", "a "]) + "".join(parts) + rng.choice(["", "-z", " end"])
    if not newline:
        text = text.replace("\n", " ")
    if not slash:
        text = text.replace("/", "_")
    if not dash:
        text = text.lstrip("-") or "x"
    return text


def fake_app(app: Path) -> None:
    """The VM's code folder: the real supervisor (``providers``), a recording ``engine``."""
    app.mkdir(parents=True)
    (app / "providers").symlink_to(ROOT / "providers")
    (app / "engine").mkdir()
    (app / "engine" / "__init__.py").write_text("")
    (app / "engine" / "__main__.py").write_text(RECORDER)


def fake_bin(folder: Path) -> Path:
    """``docker`` that records like the engine does, and an ``nvidia-smi`` that answers."""
    folder.mkdir()
    (folder / "docker").write_text(f"#!{sys.executable}\n{RECORDER}")  # no shell in between
    (folder / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return folder


def wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def hostile_case(rng: random.Random, pwned: Path, runtime: str, direct: bool) -> dict[str, Any]:
    experiment = hostile(rng, pwned)
    results = ("s3://bucket/" if direct else "/results/") + hostile(rng, pwned)
    return {
        "run_id": hostile(rng, pwned, newline=False, slash=False),
        "engine_args": ["train", "--experiment_name", experiment,
                        *[hostile(rng, pwned) for _ in range(rng.randint(1, 4))]],
        "data": hostile(rng, pwned, slash=False),
        "results_dir": results,
        "experiment": experiment,
        "image": hostile(rng, pwned, dash=False) if runtime == "docker" else None,
        "env": {hostile(rng, pwned, newline=False).replace("=", "_"):
                hostile(rng, pwned, newline=False) for _ in range(3)},
    }


def spec_of(case: dict[str, Any], data_file: str) -> LaunchSpec:
    return LaunchSpec(run_id=case["run_id"], name="n",
                      job=JobSpec(engine_args=case["engine_args"], data_file=data_file,
                                  results_dir=case["results_dir"],
                                  experiment=case["experiment"]))


@pytest.mark.parametrize("runtime", ["native", "docker"])
def test_hostile_values_never_run_and_reach_the_engine_exactly(tmp_path: Path,
                                                               runtime: str) -> None:
    rng = random.Random(f"dqlctl-{runtime}")
    pwned = tmp_path / "pwned"
    pwned.mkdir()
    bin_dir = fake_bin(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORDER": RECORDER}
    for n in range(12):
        case = hostile_case(rng, pwned, runtime, direct=(runtime == "native" and n % 2 == 0))
        spec = spec_of(case, f"/anywhere/{case['data']}")
        workdir = tmp_path / "runs" / f"{n}{case['run_id']}"  # the run id is in the VM's path
        fake_app(workdir / "app")
        data_arg = f"{workdir}/data/{case['data']}"
        engine = engine_argv(spec, runtime, python=sys.executable, workdir=str(workdir),
                             data_arg=data_arg, results_arg=case["results_dir"],
                             image=case["image"])
        (workdir / "secrets.env").write_text("".join(f"{k}={v}\n"
                                                     for k, v in case["env"].items()))
        line = launch_line(spec, workdir=str(workdir), python=sys.executable, runtime=runtime,
                           engine=engine, selfcare=None, direct=False)
        started = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert started.returncode == 0 and started.stdout == "started\n", started
        wait_for(workdir / "exit.json")
        exit_record = json.loads((workdir / "exit.json").read_text())
        assert exit_record["exit_code"] == 0, (workdir / "engine.log").read_text()
        record = json.loads((workdir / "engine-record.json").read_text())

        assert list(pwned.iterdir()) == [], case
        assert not (workdir / "secrets.env").exists()  # read, then deleted
        for key, value in case["env"].items():
            assert record["env"][key] == value  # the secret is in the engine's environment
        if runtime == "native":
            assert record["argv"] == [*case["engine_args"], f"--data_file={data_arg}",
                                      f"--results_dir={case['results_dir']}"]
        else:
            added = [f"--user={os.getuid()}:{os.getgid()}",
                     *(f"--env={k}" for k in sorted(case["env"])), "--gpus=all"]
            assert record["argv"] == ["run", *added, *engine[2:]]
            n = len(case["engine_args"])
            assert record["argv"][-n - 3] == case["image"]
            assert case["engine_args"] == record["argv"][-n - 2:-2]
            assert record["argv"][-2:] == [f"--data_file={data_arg}",
                                           f"--results_dir={case['results_dir']}"]
            assert f"--volume={workdir}:{workdir}" in record["argv"]


def test_unsafe_values_are_refused_not_passed() -> None:
    spec = LaunchSpec(run_id="r", name="n", job=JobSpec(["train"], "d.csv", "/r", "e"))
    with pytest.raises(ProviderError, match="not an image name"):
        engine_argv(spec, "docker", python="python3", workdir="/w", data_arg="/w/d.csv",
                    results_arg="/w/results", image="--privileged")
    from providers.remote_job import _env_file

    with pytest.raises(ProviderError, match="newline"):
        _env_file({"TOKEN": "a\ntouch /tmp/x"})


def test_self_care_flags() -> None:
    """What the supervisor is told: a direct run lingers briefly, a run whose results are on
    the VM waits for its collector, --keep turns the end rule off (and idle unless given)."""
    care = SelfCare.from_extra({})
    assert care.flags(direct=True) == ["--shutdown-command", "sudo shutdown -h now",
                                       "--end-grace", "60", "--idle-minutes", "30"]
    assert care.flags(direct=False)[3] == "1800"
    assert SelfCare.from_extra({"keep": True}).flags(direct=False) == []
    kept = SelfCare.from_extra({"keep": True, "idle_minutes": 120})
    assert kept.flags(direct=False) == ["--shutdown-command", "sudo shutdown -h now",
                                        "--idle-minutes", "120"]
    grace = SelfCare.from_extra({"collect_grace_minutes": 5}, shutdown_command="poweroff")
    assert grace.flags(direct=False)[:4] == ["--shutdown-command", "poweroff",
                                             "--end-grace", "300"]


def test_a_vm_that_deletes_itself_is_told_so_and_gets_its_endpoints() -> None:
    """GCE/Azure: ``--self-delete CLOUD`` beside the shutdown command (its fallback), and the
    self-delete's endpoints in the supervisor's own environment, each one argv element; a
    name that is not a variable name is refused."""
    care = SelfCare.from_extra({}, self_delete="gcp",
                               env={"DQLCTL_GCE_METADATA_URL": "http://127.0.0.1:9/x y"})
    assert care.flags(direct=True)[:4] == ["--shutdown-command", "sudo shutdown -h now",
                                           "--self-delete", "gcp"]
    spec = LaunchSpec(run_id="r1", name="r1", job=JobSpec(["train"], "d.csv", "/tmp/out", "x"))
    line = launch_line(spec, workdir="/w", python="python3", runtime="native", engine=["e"],
                       selfcare=care, direct=True)
    assert line.startswith("cd /w && (env 'DQLCTL_GCE_METADATA_URL=http://127.0.0.1:9/x y' "
                           "PYTHONPATH=/w/app setsid")
    assert "--self-delete gcp" in line
    bad = SelfCare.from_extra({}, self_delete="gcp", env={"A=B; rm": "x"})
    with pytest.raises(ProviderError, match="not an environment variable name"):
        launch_line(spec, workdir="/w", python="python3", runtime="native", engine=["e"],
                    selfcare=bad, direct=True)


# -- over SSH, on the sshd stand-in VM ---------------------------------------------------------

@pytest.fixture()
def vm(tmp_path: Path) -> Iterator[tuple[SshTarget, dict[str, Any]]]:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with vm_sshd(tmp_path / "vm-disk", keys_command=f"cat {key}.pub") as info:
        yield SshTarget("127.0.0.1", info["port"], "root", str(key), info["host_key"]), info


def recording_python(tmp_path: Path) -> Path:
    """The VM's python: ``-m engine`` records instead of training (no shell in between)."""
    python = tmp_path / "python"
    python.write_text(f"#!{sys.executable}\nimport os, sys\n"
                      "if sys.argv[1:4] != ['-u', '-m', 'engine']:\n"
                      f"    os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])\n"
                      "sys.argv = sys.argv[3:]\n" + RECORDER)
    python.chmod(0o755)
    return python


def test_a_collector_tells_the_vm_to_shut_down_now(tmp_path: Path,
                                                    vm: tuple[SshTarget, dict[str, Any]]) -> None:
    from providers.jobs import RemoteJobHandle
    from providers.ssh import SshSession

    target, info = vm
    data = tmp_path / "d.csv"
    data.write_text("date,close\n")
    spec = LaunchSpec(run_id="collectme", name="n",
                      job=JobSpec(["train"], str(data), "/results", "e"))
    with SshSession(target).connect() as session:
        out = start_remote_job(session, spec, root=str(info["root"]),
                               python=str(recording_python(tmp_path)), runtime="native",
                               selfcare=SelfCare(idle_minutes=None))  # waits 30 min to collect
    handle = RemoteJobHandle(target, out["workdir"], out["events_path"])
    wait_for(Path(out["workdir"]) / "exit.json")
    log = Path(info["root"]) / "shutdown.log"
    assert not log.exists()
    assert handle.mark_collected()
    handle.close()
    wait_for(log)
    (call,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert call["argv"] == ["-h", "now"] and call["cwd"] == out["workdir"]


@pytest.mark.parametrize("runtime", ["native", "docker"])
def test_hostile_values_over_ssh(tmp_path: Path, vm: tuple[SshTarget, dict[str, Any]],
                                 runtime: str) -> None:
    from providers.ssh import SshSession

    target, info = vm
    rng = random.Random(f"dqlctl-ssh-{runtime}")
    pwned = tmp_path / "pwned"
    pwned.mkdir()
    case = hostile_case(rng, pwned, runtime, direct=runtime == "native")
    data = tmp_path / "data" / case["data"]
    data.parent.mkdir()
    data.write_text("date,close\n")
    python = recording_python(tmp_path)
    secrets = dict(case["env"])
    with SshSession(target).connect() as session:
        out = start_remote_job(session, spec_of(case, str(data)), root=str(info["root"]),
                               python=str(python), runtime=runtime, secrets=secrets,
                               image=case["image"], direct=True, selfcare=None)
    workdir = Path(out["workdir"])
    wait_for(workdir / "exit.json")
    assert list(pwned.iterdir()) == []
    assert not (workdir / "secrets.env").exists()
    if runtime == "native":
        record = json.loads((workdir / "engine-record.json").read_text())
        assert record["argv"] == [*case["engine_args"],
                                  f"--data_file={workdir}/data/{case['data']}",
                                  f"--results_dir={case['results_dir']}"]
    else:   # pulled first (no login: not a registry of ours), then run by the digest pulled
        from providers.containers import pinned
        from tests.vm import FAKE_DIGEST

        calls = [json.loads(x) for x in (Path(info["root"]) / "docker.log").read_text()
                 .splitlines()]
        assert [c["argv"][0] for c in calls] == ["pull", "image", "run"]
        assert calls[0]["argv"] == ["pull", case["image"]]
        record = calls[-1]
        assert out["engine_image"] == pinned(case["image"], FAKE_DIGEST)
        assert record["argv"][-(len(case["engine_args"]) + 3)] == out["engine_image"]
        assert record["argv"][-(len(case["engine_args"]) + 2):-2] == case["engine_args"]
    for key, value in case["env"].items():
        assert record["env"][key] == value


def test_an_earlier_engines_end_never_speaks_for_a_new_one(
        tmp_path: Path, vm: tuple[SshTarget, dict[str, Any]]) -> None:
    """The run's folder on the same machine again (a relaunch): the old engine's exit record,
    pid and collected mark are gone before the new engine starts, so nobody reads its end."""
    from providers.remote_job import remote_workdir
    from providers.ssh import SshSession

    target, info = vm
    data = tmp_path / "d.csv"
    data.write_text("date,close\n")
    spec = LaunchSpec(run_id="again", name="n", job=JobSpec(["train"], str(data), "/r", "e"))
    old = Path(remote_workdir(str(info["root"]), "again"))
    old.mkdir(parents=True)
    stale = {"exit_code": 143, "notice": {"cloud": "aws"}}
    (old / "exit.json").write_text(json.dumps(stale))
    (old / "job.json").write_text(json.dumps({"pid": 1}))
    (old / "collected").touch()
    release = tmp_path / "release"
    python = tmp_path / "python"     # records, then waits for the test before it ends
    python.write_text(f"#!{sys.executable}\nimport os, sys, time\n"
                      "if sys.argv[1:4] != ['-u', '-m', 'engine']:\n"
                      f"    os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])\n"
                      f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.02)\n")
    python.chmod(0o755)
    with SshSession(target).connect() as session:
        out = start_remote_job(session, spec, root=str(info["root"]), python=str(python),
                               runtime="native", selfcare=None)
    workdir = Path(out["workdir"])
    assert not (workdir / "exit.json").exists() and not (workdir / "collected").exists()
    assert json.loads((workdir / "job.json").read_text())["pid"] != 1
    release.touch()
    wait_for(workdir / "exit.json")
    assert json.loads((workdir / "exit.json").read_text())["exit_code"] == 0
