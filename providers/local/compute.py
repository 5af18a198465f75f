"""The local provider: this machine is the "instance"; the engine runs as a detached process.

``launch`` starts ``providers.local.supervisor`` in a new session (so the run outlives dqlctl and
its terminal), which runs the engine natively (``sys.executable -m engine``) or in a container
(``--runtime docker|podman``) and records how it ended in the run's work directory. The instance
id is ``local-<supervisor pid>``; the pid and its kernel start time are kept so that a recycled
pid is never mistaken for our run.

Runtime choice (SkyPilot/dstack pick the container when there is one): ``auto`` uses a container
engine when one answers *and* the engine image is present locally (``dqlctl image build``), else
runs natively. Standard library only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from providers.base import (
    Capability,
    CheckItem,
    CheckResult,
    Instance,
    LaunchSpec,
    Offer,
    ProviderError,
    Resource,
    SshTarget,
    install_hint,
    instance_resource,
)
from providers.containers import (
    CONTAINER_ENGINES,
    container_engine_available,
    container_engine_item,
    container_env,
    image_present,
    run_argv,
)
from providers.jobs import LocalJobHandle
from providers.procs import pid_exists, start_ticks

DEFAULT_IMAGE = "dqlctl-engine:latest"
RUNTIMES = ("auto", "native", *CONTAINER_ENGINES)


_proc_start_ticks = start_ticks     # the name the tests and older callers use


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    if Path("/proc").is_dir():
        ticks = _proc_start_ticks(pid)
        if ticks is None:
            return False
        return start_ticks is None or ticks == start_ticks
    return pid_exists(pid)  # pragma: no cover - non-Linux fallback


class LocalProvider:
    name = "local"
    capabilities = frozenset({Capability.LOCAL_JOB, Capability.CONTAINER})

    def __init__(self, python: str | None = None, home: str | None = None,
                 price_per_hour: float = 0.0) -> None:
        self.python = python or sys.executable
        self._price = price_per_hour  # what this machine costs you ([providers.local])

    # -- verbs -----------------------------------------------------------------------------------

    def check(self) -> CheckResult:
        import importlib.util

        items = [CheckItem("python", True, f"{self.python} ({sys.version.split()[0]})")]
        missing = [m for m in ("torch", "numpy", "pandas") if importlib.util.find_spec(m) is None]
        items.append(CheckItem(
            "engine dependencies", not missing,
            "torch, numpy, pandas importable" if not missing else f"missing: {', '.join(missing)}",
            None if not missing else install_hint("engine")))
        items.append(container_engine_item())
        return CheckResult(self.name, all(i.ok for i in items), items)

    def plan(self, spec: LaunchSpec) -> dict[str, Any]:
        return {"provider": self.name, "runtime": spec.runtime}

    def price_per_hour(self, instance: Instance) -> float | None:
        return float(self._price)

    def collect(self, instance: Instance, spec: dict[str, Any]) -> None:
        """Nothing to bring home: the engine wrote to the run's results place itself."""

    def offers(self, spec: LaunchSpec) -> list[Offer]:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return [Offer(self.name, "local", "localhost", None, 0, os.cpu_count() or 1,
                      round(mem, 1), False, 0.0)]

    def resolve_runtime(self, requested: str, image: str | None) -> str:
        if requested not in RUNTIMES:
            raise ProviderError(f"unknown runtime {requested!r} (choose from {', '.join(RUNTIMES)})")
        if requested == "native":
            return "native"
        if requested in CONTAINER_ENGINES:
            if not container_engine_available(requested):
                raise ProviderError(
                    f"runtime {requested}: no working {requested} engine here; "
                    "start it or use --runtime native")
            return requested
        for engine in CONTAINER_ENGINES:  # auto
            if container_engine_available(engine) and image_present(engine, image or DEFAULT_IMAGE):
                return engine
        return "native"

    def _command(self, spec: LaunchSpec, runtime: str) -> list[str]:
        job = spec.job
        if runtime == "native":
            return [self.python, "-u", "-m", "engine", *job.engine_args,
                    "--data_file", job.data_file, "--results_dir", job.results_dir]
        to_bucket = "://" in job.results_dir
        return run_argv(runtime, name=f"dqlctl-{spec.run_id}", image=spec.image or DEFAULT_IMAGE,
                        engine_args=list(job.engine_args), data_file=job.data_file,
                        results_dir=job.results_dir,
                        mounts=[] if to_bucket else [job.results_dir],
                        network="host" if to_bucket else "none",
                        labels={"dqlctl.run": spec.run_id})

    def launch(self, spec: LaunchSpec) -> Instance:
        if not spec.workdir:
            raise ProviderError("local launch needs a work directory")
        workdir = Path(spec.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        Path(spec.job.results_dir).mkdir(parents=True, exist_ok=True)
        runtime = self.resolve_runtime(spec.runtime, spec.image)
        command = self._command(spec, runtime)
        log_path = workdir / "engine.log"
        env = {**os.environ, **spec.job.env, "PYTHONUNBUFFERED": "1"}
        tags = [f"--tag={k}={v}" for k, v in sorted(spec.tags.items())]
        container: list[str] = []
        if runtime != "native":  # the engine's settings go in by name (values stay in the env)
            container = ["--container", *(f"--pass-env={k}" for k in container_env(env))]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [self.python, "-m", "providers.local.supervisor", "--workdir", str(workdir),
                 *tags, *container, "--", *command],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, env=env,
                cwd=str(Path(__file__).resolve().parents[2]))
        # Never waited on here: liveness comes from /proc (a zombie counts as exited) and the
        # supervisor's exit.json; subprocess reaps the child on a later Popen.
        return Instance(
            provider=self.name, instance_id=f"local-{proc.pid}", state="running",
            region="local", instance_type="localhost", spot=False, launched_at=time.time(),
            tags=dict(spec.tags),
            extra={"pid": proc.pid, "start_ticks": _proc_start_ticks(proc.pid),
                   "workdir": str(workdir), "log_path": str(log_path), "runtime": runtime,
                   "command": command})

    def wait_ready(self, instance: Instance) -> Instance:
        return self.describe(instance)

    def describe(self, instance: Instance) -> Instance:
        alive = pid_alive(instance.extra["pid"], instance.extra.get("start_ticks"))
        instance.state = "running" if alive else "terminated"
        return instance

    def list_instances(self, tag: dict[str, str]) -> list[Instance]:
        """Supervisors on this machine whose command line carries every ``tag`` (a None value
        matches any value)."""
        wanted = {f"--tag={k}={v}" for k, v in tag.items() if v is not None}
        keys = [f"--tag={k}=" for k, v in tag.items() if v is None]  # None: any value
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in argv if a]
            if "providers.local.supervisor" not in args or not wanted.issubset(args):
                continue
            if not all(any(a.startswith(k) for a in args) for k in keys):
                continue
            pid = int(entry.name)
            tags = dict(a[len("--tag="):].split("=", 1) for a in args if a.startswith("--tag="))
            workdir = args[args.index("--workdir") + 1] if "--workdir" in args else None
            found.append(Instance(self.name, f"local-{pid}", "running", "local", "localhost",
                                  tags=tags, extra={"pid": pid,
                                                    "start_ticks": _proc_start_ticks(pid),
                                                    "workdir": workdir}))
        return found

    def list_resources(self, tag: dict[str, str | None]) -> list[Resource]:
        """The supervisors carrying ``tag``: a local run creates nothing else."""
        return [instance_resource(i) for i in self.list_instances(tag)]

    def delete_resource(self, resource: Resource) -> None:
        self.terminate(Instance.from_dict(resource.extra["instance"]))

    def terminate(self, instance: Instance, grace_s: float = 30.0) -> None:
        """Ask the run to stop (SIGTERM: the engine checkpoints), then kill what is left."""
        pid = instance.extra["pid"]
        ticks = instance.extra.get("start_ticks")
        if not pid_alive(pid, ticks):
            instance.state = "terminated"
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and pid_alive(pid, ticks):
            time.sleep(0.05)
        if pid_alive(pid, ticks):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        instance.state = "terminated"

    def ssh_target(self, instance: Instance) -> SshTarget:
        raise ProviderError("the local provider has no SSH target")

    # -- job verbs --------------------------------------------------------------------------------

    def start_job(self, instance: Instance, spec: LaunchSpec,
                  secrets: dict[str, str] | None = None) -> Instance:
        # launch() already started the supervisor and the engine, which inherits this process's
        # environment (secrets included) without them appearing on any command line
        return instance

    def job(self, instance: Instance, spec: dict[str, Any]) -> LocalJobHandle:
        job = spec["job"]
        events = str(Path(job["results_dir"]) / job["experiment"] / "events.jsonl")
        pid, ticks = instance.extra["pid"], instance.extra.get("start_ticks")
        return LocalJobHandle(instance.extra["workdir"], events, lambda: pid_alive(pid, ticks))
