"""Bootstrap a VM over SSH and start the engine on it, detached; shared by every cloud provider.

Layout on the VM (``<root>`` is ``remote_root``, default ``~/dqlctl``)::

    <root>/runs/<run id>/app/           the engine's code (``--runtime native``), shipped over SFTP
    <root>/runs/<run id>/data/          a local data file, uploaded (URIs are read by the engine)
    <root>/runs/<run id>/secrets.env    0600, KEY=VALUE; read by the supervisor, never on a command line
    <root>/runs/<run id>/engine.log, job.json, exit.json, results/<experiment>/events.jsonl

The engine runs under ``providers.local.supervisor`` on the VM exactly as it does locally, so a
remote job ends the same way (``exit.json``) and is read by the same ``RemoteJobHandle``.

Runtimes: ``native`` runs ``python -m engine`` with the VM's Python (a deep-learning image has
torch; the bootstrap checks and says what is missing); ``docker`` runs the engine image
(``docker run --gpus all`` when ``nvidia-smi`` answers), pulled with the VM's own role.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from providers.base import LaunchSpec, ProviderError
from providers.layout import EVENTS_FILE, STAGING_ENV, staged_experiment_dir
from providers.ssh import SshSession, q

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_PACKAGES = ("engine", "providers")


def app_tarball() -> bytes:
    """The engine's code as a tar.gz (Python sources of ``engine`` and ``providers``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for package in SHIPPED_PACKAGES:
            for path in sorted((PROJECT_ROOT / package).rglob("*")):
                if "__pycache__" in path.parts or not path.is_file():
                    continue
                if path.suffix not in (".py", ".csv", ".md", ".json", ".tcss"):
                    continue
                tar.add(path, arcname=str(path.relative_to(PROJECT_ROOT)))
    return buf.getvalue()


def remote_workdir(root: str, run_id: str) -> str:
    return str(PurePosixPath(root) / "runs" / run_id)


def _env_file(values: dict[str, str]) -> bytes:
    for key, value in values.items():
        if "\n" in value or "=" in key:
            raise ProviderError(f"setting {key!r} cannot be written (newline or '=' in it)")
    return "".join(f"{k}={v}\n" for k, v in values.items()).encode()


def start_remote_job(session: SshSession, spec: LaunchSpec, *, root: str, python: str,
                     runtime: str, secrets: dict[str, str] | None = None,
                     image: str | None = None, start_timeout: float = 60.0,
                     env: dict[str, str] | None = None, direct: bool = False) -> dict[str, Any]:
    """Prepare the VM and start the engine detached; what the handle needs to find it again.

    ``env``: settings for the engine's environment (not secret: the region, say). ``direct``:
    the VM has an identity that can write the run's bucket (an instance role), so a native
    engine whose results go to object storage writes there itself: each checkpoint is uploaded
    as it is written and survives the VM (``--resume`` finds it), and nothing is left to
    collect. Otherwise the engine writes to the VM's disk and ``collect`` copies it home.
    """
    job = spec.job
    workdir = remote_workdir(root, spec.run_id)
    session.check(f"mkdir -p {q(workdir)}/data {q(workdir)}/results",
                  "creating the run's folder")
    # Resolve the work dir to an absolute path (SFTP and the shell agree on it from here on).
    workdir = session.check(f"cd {q(workdir)} && pwd -P", "resolving the run's folder").strip()

    data_arg = job.data_file
    if "://" not in job.data_file:
        local = Path(job.data_file)
        data_arg = f"{workdir}/data/{local.name}"
        session.put_file(local, data_arg, mode=0o644)

    results = f"{workdir}/results"
    env = dict(env or {})
    events_path = f"{results}/{job.experiment}/{EVENTS_FILE}"
    direct = direct and runtime == "native" and "://" in job.results_dir \
        and not job.results_dir.startswith("file://")
    if direct:
        staging = f"{workdir}/staging"
        env[STAGING_ENV] = staging
        staged = staged_experiment_dir(staging, job.results_dir, job.experiment)
        events_path = f"{staged}/{EVENTS_FILE}"
    results_arg = job.results_dir if direct else results
    if runtime == "native":
        session.put_bytes(app_tarball(), f"{workdir}/app.tar.gz", mode=0o644)
        session.check(f"mkdir -p {q(workdir)}/app && tar -xzf {q(workdir)}/app.tar.gz "
                      f"-C {q(workdir)}/app", "unpacking the engine")
        code, _, err = session.run(f"{q(python)} -c 'import torch, numpy, pandas'", timeout=300)
        if code != 0:
            missing = err.strip().splitlines()[-1:] or ["python not found"]
            raise ProviderError(
                f"the VM's Python ({python}) cannot run the engine: {missing[0]}; use a "
                "deep-learning image or --runtime docker")
        engine = [python, "-u", "-m", "engine", *job.engine_args,
                  "--data_file", data_arg, "--results_dir", results_arg]
    elif runtime == "docker":
        if not image:
            raise ProviderError("--runtime docker needs an engine image (dqlctl image push)")
        gpus = "$(command -v nvidia-smi >/dev/null && echo --gpus=all)"
        data_in = f"/data/{PurePosixPath(data_arg).name}" if "://" not in data_arg else data_arg
        engine = ["docker", "run", "--rm", "--name", f"dqlctl-{spec.run_id}", gpus,
                  "--env-file", f"{workdir}/secrets.env",
                  "-v", f"{workdir}/data:/data:ro", "-v", f"{results}:/results", image,
                  *job.engine_args, "--data_file", data_in, "--results_dir", "/results"]
    else:
        raise ProviderError(f"unknown runtime {runtime!r} for a VM (native or docker)")

    session.put_bytes(_env_file({**env, **(secrets or {})}), f"{workdir}/secrets.env",
                      mode=0o600)
    engine_cmd = " ".join(a if a.startswith("$(") else q(a) for a in engine)
    supervisor = (f"{q(python)} -m providers.local.supervisor --workdir {q(workdir)} "
                  f"--env-file {q(workdir + '/secrets.env')} --tag=dqlctl:run={q(spec.run_id)} "
                  f"-- {engine_cmd}")
    pythonpath = f"PYTHONPATH={q(workdir + '/app')} " if runtime == "native" else ""
    if runtime == "docker":
        # the supervisor itself needs the code too; it is small and has no dependencies
        session.put_bytes(app_tarball(), f"{workdir}/app.tar.gz", mode=0o644)
        session.check(f"mkdir -p {q(workdir)}/app && tar -xzf {q(workdir)}/app.tar.gz "
                      f"-C {q(workdir)}/app", "unpacking the supervisor")
        pythonpath = f"PYTHONPATH={q(workdir + '/app')} "
    session.check(
        # the subshell exits at once; only the detached supervisor lives on, with none of the
        # channel's descriptors (else the command would not return until the engine ends)
        f"cd {q(workdir)} && ({pythonpath}setsid nohup {supervisor} >> engine.log 2>&1 "
        f"< /dev/null &) && echo started", "starting the engine", timeout=60)
    deadline = time.monotonic() + start_timeout
    while not session.exists(f"{workdir}/job.json"):
        if session.exists(f"{workdir}/exit.json") or time.monotonic() > deadline:
            log = session.read_from(f"{workdir}/engine.log", 0).decode(errors="replace")
            last = [x for x in log.strip().splitlines() if x.strip()][-1:] or ["no output"]
            raise ProviderError(f"the engine did not start on the VM: {last[0]}")
        time.sleep(0.1)
    return {"workdir": workdir, "events_path": events_path, "results_dir": results,
            "runtime": runtime, "direct": direct}
