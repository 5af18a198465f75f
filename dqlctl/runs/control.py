"""The operator's hands on a live run: ``stop`` (checkpoint, collect, release) and
``shell_command`` (a shell on its machine, host key pinned). ``down`` is in ``lifecycle``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from dqlctl import registry as reg
from dqlctl.context import Context
from dqlctl.errors import ProviderFailure, UsageError
from dqlctl.registry import Run
from dqlctl.runs.following import POLL_S
from dqlctl.runs.jobs import instance_of, job_handle
from dqlctl.runs.lifecycle import down
from dqlctl.runs.reconciling import finish_if_ended, reconcile
from providers.base import Capability, ProviderError


def stop(ctx: Context, run: Run, wait_s: float = 120.0) -> Run:
    """Stop a RUNNING run gracefully: the engine gets SIGTERM and writes a checkpoint, its
    results (checkpoint included) are collected, then the machine is released (CANCELLED).

    ``down`` releases the machine at once; this keeps the work. A job that has not ended after
    ``wait_s`` seconds is taken down. A run that has already ended is returned as it is.
    """
    registry = ctx.registry
    run = reconcile(ctx, run)
    if run.terminal:
        return run
    if run.state != reg.RUNNING:
        raise UsageError(f"run {run.id} is {run.state}: only a RUNNING run can be stopped "
                         "(`dqlctl down` releases it)")
    inst = instance_of(run)
    handle = job_handle(ctx, run)
    if inst is None or handle is None:
        return down(ctx, run, reason="stopped (no job to ask): machine released")
    registry.merge(run.id, spec={"stop_requested": ctx.clock()})
    registry.add_event(run.id, "stop", {"wait_s": wait_s})
    try:
        handle.stop()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not handle.status().running:
                break
            time.sleep(POLL_S)
        else:
            return down(ctx, registry.get(run.id),
                        reason=f"did not stop within {wait_s:.0f} s: machine released")
        return finish_if_ended(ctx, registry.get(run.id), handle)
    finally:
        handle.close()


@dataclass(frozen=True)
class ShellCommand:
    """How to open a shell on a run's machine: ``argv`` run in ``cwd``."""

    argv: list[str]
    cwd: str | None = None


def shell_command(ctx: Context, run: Run, command: list[str] | None = None) -> ShellCommand:
    """``ssh`` to the run's VM with its key and its pinned host key only (a changed host key is
    refused, never learned), in the run's folder; for a local run, a shell in its folder.

    ``command`` runs instead of an interactive shell. The pinned key is written to
    ``<home>/ssh/<run>.known_hosts``; the private key stays where the provider keeps it.
    """
    import shlex

    inst = instance_of(run)
    if run.terminal or inst is None:
        raise UsageError(f"run {run.id} is {run.state}: it has no machine to open a shell on")
    workdir = inst.extra.get("workdir")
    provider = ctx.provider(run.provider)
    if Capability.LOCAL_JOB in provider.capabilities:
        shell = os.environ.get("SHELL") or "/bin/sh"
        return ShellCommand(command or [shell], cwd=workdir)
    try:
        target = provider.ssh_target(inst)
    except ProviderError as exc:
        raise ProviderFailure(f"cannot reach run {run.id}: {exc}") from None
    if not target.host_key:
        raise ProviderFailure(f"run {run.id} has no pinned host key yet (it is {run.state}): "
                              "wait until it is RUNNING")
    folder = ctx.home / "ssh"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    known = folder / f"{run.id}.known_hosts"
    host = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    known.write_text(f"{host} {target.host_key}\n")
    argv = ["ssh", "-i", target.key_path, "-p", str(target.port),
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "GlobalKnownHostsFile=/dev/null",
            f"{target.username}@{target.host}"]
    if command:
        argv.append(f"cd {shlex.quote(workdir)} && {shlex.join(command)}" if workdir
                    else shlex.join(command))
    else:
        argv.insert(1, "-t")
        if workdir:
            argv.append(f"cd {shlex.quote(workdir)} && exec \"${{SHELL:-/bin/sh}}\" -l")
    return ShellCommand(argv)
