"""Bootstrap a VM over SSH and start the engine on it, detached; shared by every cloud provider.

Layout on the VM (``<root>`` is ``remote_root``, default ``~/dqlctl``)::

    <root>/runs/<run id>/app/           the engine's and supervisor's code, shipped over SFTP
    <root>/runs/<run id>/data/          a local data file, uploaded (URIs are read by the engine)
    <root>/runs/<run id>/secrets.env    0600, KEY=VALUE; read by the supervisor, which deletes it
    <root>/runs/<run id>/engine.log, job.json, exit.json, results/<experiment>/events.jsonl
    <root>/runs/<run id>/collected      touched by a controller: "results collected, shut down"
    <root>/runs/<run id>/selfcare.json  written when the supervisor shut the machine down

The engine runs under ``providers.local.supervisor`` on the VM exactly as it does locally, so a
remote job ends the same way (``exit.json``) and is read by the same ``RemoteJobHandle``.

Runtimes: ``native`` runs ``python -m engine`` with the VM's Python (a deep-learning image has
torch; the bootstrap checks and says what is missing); ``docker`` runs the engine image, pulled
with the VM's own role; the supervisor adds ``--gpus=all`` itself when ``nvidia-smi`` answers.

No shell text crosses the wire but what this module writes: every value (engine arguments, paths,
image, run id, the shutdown command) is one quoted argv element of the line that starts the
supervisor (``launch_line``), and what depends on the VM (its GPUs) is decided there by the
supervisor from a typed flag. Secrets travel in a 0600 file, never on a command line, and the
supervisor deletes that file as soon as it has read it.

Self-care (``SelfCare``): the VM does not depend on its controller. When the run ends the
supervisor shuts the machine down: ``DIRECT_LINGER_S`` after the end when the engine wrote to a
bucket itself (long enough for a live controller to read the end over SSH), else when a controller
touches ``collected`` or ``--collect-grace`` after the end (the results are on the VM's disk until
collected); and ``--idle-minutes`` after the end in any case. ``--keep`` turns the end rule off
(and the idle rule too unless ``--idle-minutes`` is given). The machine's end stops the
billing on every cloud: on AWS a guest shutdown terminates the instance
(``InstanceInitiatedShutdownBehavior=terminate``); on GCE and Azure, where a shutdown would only
stop it, the VM deletes itself with its own identity (``SelfCare.self_delete``: the supervisor
runs ``providers.selfdelete``, the shutdown command being the fallback). What each cloud does is
in ``SHUTDOWN_NOTES``.
"""

from __future__ import annotations

import io
import tarfile
import time
from dataclasses import dataclass, field
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


DEFAULT_SHUTDOWN = "sudo shutdown -h now"
DIRECT_LINGER_S = 60.0          # direct results: the end is safe; a live controller reads exit.json
DEFAULT_COLLECT_GRACE_S = 1800.0    # results on the VM's disk: how long to wait for a collector
DEFAULT_IDLE_MINUTES = 30.0
SUPERVISOR = "providers.local.supervisor"
#: what an engine's supervisor leaves in the run's folder about that engine (providers/jobs.py)
#: a sweep pool's handover file in the last engine's folder (the supervisor's ``NEXT``)
POOL_NEXT = "next"
STALE_MARKERS = ("job.json", "exit.json", "collected", POOL_NEXT)

SHUTDOWN_NOTES = {
    "aws": "launched with InstanceInitiatedShutdownBehavior=terminate: `shutdown -h` terminates "
           "the instance (billing ends, its volumes are deleted with it)",
    "gcp": "the VM deletes itself (instances.delete with its own service account, which holds "
           "a custom role with compute.instances.delete alone, bound on that instance only): "
           "machine, GPU and boot disk billing end. Should the delete fail it shuts down, which "
           "only stops the VM (its boot disk bills until `dqlctl down` or `gc`)",
    "azure": "the VM deletes itself (ARM DELETE with its managed identity, which holds Virtual "
             "Machine Contributor on that VM only): machine, GPU and OS disk billing end; the "
             "run's group keeps its network (the static public IP bills a little) until "
             "`dqlctl down` or `gc`. Should the delete fail it powers off, which leaves it "
             "allocated (billing) until `down`",
}


@dataclass(frozen=True)
class SelfCare:
    """When the VM shuts itself down (``--keep``, ``--idle-minutes``, the collect grace)."""

    keep: bool = False
    idle_minutes: float | None = DEFAULT_IDLE_MINUTES   # None: no idle rule
    collect_grace_s: float = DEFAULT_COLLECT_GRACE_S
    shutdown_command: str = DEFAULT_SHUTDOWN
    #: the cloud the VM asks to delete it (``providers.selfdelete``); None: shut down only
    self_delete: str | None = None
    #: settings for the supervisor's own environment (the self-delete endpoints; not secret)
    env: dict[str, str] = field(default_factory=dict)
    #: a sweep pool's VM: handed from member to member (``hand_over``), checked before a shutdown
    pool: bool = False

    @classmethod
    def from_extra(cls, extra: dict[str, Any], **settings: Any) -> SelfCare:
        """From a launch spec's ``extra`` (``keep``, ``idle_minutes``, ``collect_grace_minutes``):
        a kept VM has no idle rule unless ``--idle-minutes`` was given."""
        keep = bool(extra.get("keep"))
        idle = extra.get("idle_minutes")
        if idle is None and not keep:
            idle = DEFAULT_IDLE_MINUTES
        if extra.get("collect_grace_minutes") is not None:
            settings["collect_grace_s"] = float(extra["collect_grace_minutes"]) * 60
        settings.setdefault("pool", bool(extra.get("pool")))
        return cls(keep=keep, idle_minutes=float(idle) if idle is not None else None,
                   **settings)

    def flags(self, direct: bool) -> list[str]:
        """The supervisor's self-care flags (none: the VM is left alone)."""
        if self.keep and self.idle_minutes is None:
            return []
        out = ["--shutdown-command", self.shutdown_command]
        if self.self_delete:
            out += ["--self-delete", self.self_delete]
        if not self.keep:
            out += ["--end-grace", f"{DIRECT_LINGER_S if direct else self.collect_grace_s:g}"]
        if self.idle_minutes is not None:
            out += ["--idle-minutes", f"{self.idle_minutes:g}"]
        if self.pool:
            out.append("--pool")
        return out


def engine_argv(spec: LaunchSpec, runtime: str, *, python: str, workdir: str, data_arg: str,
                results_arg: str, image: str | None) -> list[str]:
    """The engine's command on the VM, as argv (the supervisor runs it without a shell).
    ``--data_file=``/``--results_dir=`` are joined to their values so that a value starting
    with ``-`` is still a value. In a container (``docker``) the run's folder is mounted at the
    same path, so the data, the results and the staging folder keep their paths
    (providers/containers.py ``run_argv``)."""
    job = spec.job
    if runtime == "native":
        return [python, "-u", "-m", "engine", *job.engine_args,
                f"--data_file={data_arg}", f"--results_dir={results_arg}"]
    if runtime == "docker":
        from providers.containers import run_argv

        if not image:
            raise ProviderError("--runtime docker needs an engine image (dqlctl image push)")
        try:
            return run_argv("docker", name=f"dqlctl-{spec.run_id}", image=image,
                            engine_args=list(job.engine_args), data_file=data_arg,
                            results_dir=results_arg, mounts=[workdir], network="host",
                            labels={"dqlctl.run": spec.run_id})
        except ValueError as exc:
            raise ProviderError(str(exc), field="image") from None
    raise ProviderError(f"unknown runtime {runtime!r} for a VM (native or docker)")


def launch_line(spec: LaunchSpec, *, workdir: str, python: str, runtime: str,
                engine: list[str], selfcare: SelfCare | None, direct: bool,
                notices: str | None = None, events_path: str | None = None) -> str:
    """The one shell line that starts the supervisor detached in ``workdir``. Every value in it
    is a quoted argv element; the subshell exits at once and only the supervisor lives on, with
    none of the channel's descriptors (else the command would not return until the engine ends).
    ``notices``: the cloud whose preemption notices the supervisor watches (a spot VM), the
    notice events going to ``events_path``.
    """
    care_env = sorted((selfcare.env if selfcare else {}).items())
    for key, _ in care_env:
        if not key.isidentifier():
            raise ProviderError(f"self-care setting {key!r} is not an environment variable name")
    argv = ["env", *(f"{k}={v}" for k, v in care_env), f"PYTHONPATH={workdir}/app", "setsid",
            "nohup", python, "-m", SUPERVISOR,
            f"--workdir={workdir}", f"--env-file={workdir}/secrets.env", "--remove-env-file",
            f"--tag=dqlctl:run={spec.run_id}"]
    if runtime == "docker":
        argv += ["--container", "--gpus=auto"]
    if selfcare is not None:
        argv += selfcare.flags(direct)
    if notices:
        argv += [f"--notices={notices}"] + ([f"--events={events_path}"] if events_path else [])
    argv += ["--", *engine]
    return (f"cd {q(workdir)} && ({' '.join(q(a) for a in argv)} >> engine.log 2>&1 "
            "< /dev/null &) && echo started")


def _ship_code(session: SshSession, workdir: str) -> None:
    session.put_bytes(app_tarball(), f"{workdir}/app.tar.gz", mode=0o644)
    session.check(f"mkdir -p {q(workdir + '/app')} && tar -xzf {q(workdir + '/app.tar.gz')} "
                  f"-C {q(workdir + '/app')}", "unpacking the engine")


def start_remote_job(session: SshSession, spec: LaunchSpec, *, root: str, python: str,
                     runtime: str, secrets: dict[str, str] | None = None,
                     image: str | None = None, start_timeout: float = 60.0,
                     env: dict[str, str] | None = None, direct: bool = False,
                     selfcare: SelfCare | None = None,
                     notices: str | None = None,
                     registry_login: tuple[str, str | None] | None = None) -> dict[str, Any]:
    """Prepare the VM and start the engine detached; what the handle needs to find it again.

    ``env``: settings for the engine's environment (not secret: the region, say). ``direct``:
    the VM has an identity that can write the run's bucket (an AWS instance role, a GCE service
    account, an Azure managed identity), so a native
    engine whose results go to object storage writes there itself: each checkpoint is uploaded
    as it is written and survives the VM (``--resume`` finds it), and nothing is left to
    collect. Otherwise the engine writes to the VM's disk and ``collect`` copies it home.
    ``selfcare``: when the VM shuts itself down (None: never, as for a machine not ours).
    ``notices``: the cloud whose preemption notices the supervisor watches (a spot VM; its
    metadata endpoint comes from ``env`` or the self-care settings, providers/notices.py).
    ``registry_login``: (cloud, region) whose identity logs the VM's container engine in to the
    image's registry (``docker`` runtime; providers/image_pull.py). The image is pulled before
    the engine starts and run by the digest pulled, which ``engine_image`` in the result records.
    """
    job = spec.job
    workdir = remote_workdir(root, spec.run_id)
    # a folder left by an earlier engine of this run (the same machine again) must not speak
    # for this one: its end, its pid and its collected mark go first
    session.check(f"mkdir -p {q(workdir + '/data')} {q(workdir + '/results')} && "
                  f"rm -f {' '.join(q(f'{workdir}/{n}') for n in STALE_MARKERS)}",
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
    direct = direct and "://" in job.results_dir \
        and not job.results_dir.startswith("file://")
    if direct:
        staging = f"{workdir}/staging"
        env[STAGING_ENV] = staging
        staged = staged_experiment_dir(staging, job.results_dir, job.experiment)
        events_path = f"{staged}/{EVENTS_FILE}"
    _ship_code(session, workdir)  # the supervisor's code, and the engine's for native
    session.put_bytes(_env_file({**env, **(secrets or {})}), f"{workdir}/secrets.env",
                      mode=0o600)
    if runtime == "docker" and image:
        image = _pull_image(session, workdir, python, image, registry_login)
    engine = engine_argv(spec, runtime, python=python, workdir=workdir, data_arg=data_arg,
                         results_arg=job.results_dir if direct else results, image=image)
    if runtime == "native":
        code, _, err = session.run(f"{q(python)} -c 'import torch, numpy, pandas'", timeout=300)
        if code != 0:
            missing = err.strip().splitlines()[-1:] or ["python not found"]
            raise ProviderError(
                f"the VM's Python ({python}) cannot run the engine: {missing[0]}; use a "
                "deep-learning image or --runtime docker")

    session.check(launch_line(spec, workdir=workdir, python=python, runtime=runtime,
                              engine=engine, selfcare=selfcare, direct=direct,
                              notices=notices, events_path=events_path),
                  "starting the engine", timeout=60)
    deadline = time.monotonic() + start_timeout
    while not session.exists(f"{workdir}/job.json"):
        if session.exists(f"{workdir}/exit.json") or time.monotonic() > deadline:
            log = session.read_from(f"{workdir}/engine.log", 0).decode(errors="replace")
            last = [x for x in log.strip().splitlines() if x.strip()][-1:] or ["no output"]
            raise ProviderError(f"the engine did not start on the VM: {last[0]}")
        time.sleep(0.1)
    info = {"workdir": workdir, "events_path": events_path, "results_dir": results,
            "runtime": runtime, "direct": direct}
    if runtime == "docker":
        info["engine_image"] = image      # pinned to the digest the VM pulled
    return info


def hand_over(session: SshSession, workdir: str, run_id: str) -> bool:
    """A sweep pool's VM whose last engine ran in ``workdir``: hand it to run ``run_id`` (its
    folder next to that one) by creating ``workdir/next`` exclusively; False when the last
    engine's supervisor created it first, shutting the machine down
    (providers/local/supervisor.py: ``--pool``)."""
    target = str(PurePosixPath(workdir).parent / run_id)
    marker = f"{workdir}/{POOL_NEXT}"
    out = session.check(f"(set -C; printf '%s\\n' {q(target)} > {q(marker)}) 2>/dev/null "
                        f"&& echo handed || cat {q(marker)}", "handing the machine over")
    return out.strip().splitlines()[-1:] == ["handed"]


def _pull_image(session: SshSession, workdir: str, python: str, image: str,
                login: tuple[str, str | None] | None) -> str:
    """Pull the engine image on the VM (logged in with the VM's identity when ``login`` names
    a cloud); the reference pinned to the digest pulled (providers/image_pull.py)."""
    argv = ["env", f"PYTHONPATH={workdir}/app", python, "-m", "providers.image_pull",
            "--engine", "docker", f"--env-file={workdir}/secrets.env"]
    if login:
        argv += ["--login", login[0]] + (["--region", login[1]] if login[1] else [])
    code, out, err = session.run(" ".join(q(a) for a in [*argv, "--", image]), timeout=1800)
    lines = out.strip().splitlines()
    if code != 0 or not lines:
        why = (err.strip().splitlines() or ["no output"])[-1]
        raise ProviderError(f"the VM could not pull the engine image {image}: {why}")
    return lines[-1].strip()
