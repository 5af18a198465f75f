"""The small process that owns a run: starts the engine, forwards signals, records the end, and
(on a VM) shuts the machine down when nobody needs it any more.

``python -m providers.local.supervisor --workdir DIR --tag dqlctl:run=ID [options] -- ARGV...``

It is started in a new session (detached from the terminal and from the SSH channel), so a run
survives dqlctl exiting. It writes ``DIR/job.json`` when the engine has started (the engine's pid)
and ``DIR/exit.json`` when it has ended (exit code, signal), each atomically (temp + rename), so a
dqlctl started later can tell a finished run from a vanished one. SIGTERM/SIGINT/SIGHUP are passed
on to the engine, which checkpoints and exits cleanly. The ``--tag`` stays on the command line so
that ``list_instances`` finds orphaned runs by scanning the process table. Standard library only.

Everything arrives as argv elements, never as shell text: the command to run (``ARGV``), the
shutdown command (``shlex``-split, run without a shell), and what the supervisor adds itself:

``--env-file F``        KEY=VALUE lines added to the engine's environment (secrets: kept off every
                        command line); with ``--remove-env-file`` the file is deleted as soon as it
                        has been read, so no secret rests on the VM's disk.
``--container``         ARGV is ``<docker|podman> run ...``: the env file's keys are passed as
                        ``-e KEY`` (the value comes from the environment, never argv), the
                        container runs as the supervisor's own user and group (``--user``: what
                        it writes in the mounted run folder is the run owner's), and with
                        ``--gpus auto`` ``--gpus=all`` is added when ``nvidia-smi`` answers here.

Self-care (the VM does not depend on its controller; only with ``--shutdown-command``): once the
engine has ended, the machine is shut down

* when ``DIR/collected`` appears (a controller has what it needs: "shut down now"), or
  ``--end-grace`` seconds after the end (the results are safe in a bucket, or nobody came to
  collect them), unless no ``--end-grace`` is given (``--keep``);
* ``--idle-minutes`` after the end in any case (when given: the backstop that also holds a kept
  VM to a limit).

The shutdown is ``--shutdown-command`` (default on a VM: ``sudo shutdown -h now``; each cloud's
launch makes a guest shutdown end the billing, see providers/remote_job.py). With
``--self-delete CLOUD`` (GCE, Azure, where a shutdown does not end the billing) the machine
first asks its cloud to delete it, with its own identity (``python -m providers.selfdelete
CLOUD``, same Python, same ``PYTHONPATH``), and runs the shutdown command only when that fails.
What happened is written to ``DIR/selfcare.json``.

A sweep pool's VM (``--pool``, dqlctl/sweeps/pool.py) takes one member after another, each under
a supervisor of its own. Between members the controller hands the machine over by writing the
next run's folder to ``DIR/next`` (created exclusively: ``set -C``); a supervisor about to shut
the machine down creates the same file first, with ``shutdown`` in it. Whoever creates it first
wins: the controller that finds ``shutdown`` there gives the next member a new VM; the supervisor
that finds a folder there waits (``HANDOVER_S``) for that run's engine to start, whose supervisor
then carries the machine's self-care, and exits without shutting down. Should that engine never
start (the controller vanished mid-handover), it shuts the machine down after all.

Preemption notices (``--notices CLOUD``, a spot VM; see providers/notices.py): a thread watches
the cloud's metadata service. On a notice it appends a ``notice`` event (cloud, kind, action,
deadline) to the run's events (``--events FILE``, the engine's events.jsonl: it reaches dqlctl
and the bucket like the engine's own), then, for a preemption, sends SIGTERM to the engine, which
checkpoints at once (mid-episode if need be), uploads it, emits its ``checkpoint`` event and
exits; ``exit.json`` then carries the ``notice`` (dqlctl: PREEMPTED, relaunched from that
checkpoint), and on Azure the event is acknowledged (the platform may go on). A rebalance
recommendation (AWS) sends SIGUSR1: the engine checkpoints at the end of its current step and
goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from providers.layout import read_env_file

COLLECTED = "collected"     # touched by a controller that has collected the results
NEXT = "next"               # pool: the run the machine was handed to, or "shutdown"
SHUTDOWN_CLAIM = "shutdown"
HANDOVER_S = 900.0          # pool: how long a handed-over machine waits for the next engine
POLL_S = 1.0


def write_json_atomic(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def gpus_here() -> bool:
    """Whether this machine has a working NVIDIA driver (``nvidia-smi`` answers)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def container_command(command: list[str], env_keys: list[str], gpus: str) -> list[str]:
    """``<engine> run OPTIONS...`` with the supervisor's own options added right after ``run``."""
    if len(command) < 2 or command[1] != "run":
        raise ValueError(f"--container expects '<docker|podman> run ...', got {command[:2]}")
    added = [f"--user={os.getuid()}:{os.getgid()}", *(f"--env={key}" for key in env_keys)]
    if gpus == "all" or (gpus == "auto" and gpus_here()):
        added.append("--gpus=all")
    return [*command[:2], *added, *command[2:]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dqlctl-supervisor")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--tag", action="append", default=[])
    parser.add_argument("--env-file", help="KEY=VALUE lines added to the engine's environment "
                        "(secrets: kept off every command line)")
    parser.add_argument("--remove-env-file", action="store_true",
                        help="delete the env file once it has been read")
    parser.add_argument("--container", action="store_true",
                        help="the command is '<docker|podman> run ...': pass the env file's keys "
                        "with --env KEY and add --gpus=all per --gpus")
    parser.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                        help="with --container: pass this variable of the supervisor's own "
                        "environment on too (by name: its value never reaches a command line)")
    parser.add_argument("--gpus", choices=("auto", "all", "none"), default="none",
                        help="with --container: auto adds --gpus=all when nvidia-smi answers")
    parser.add_argument("--shutdown-command",
                        help="shut the machine down with this command (split like a shell "
                        "would, run without one) when the run no longer needs it")
    parser.add_argument("--self-delete", metavar="CLOUD",
                        help="instead of the shutdown command: ask CLOUD to delete this machine "
                        "(python -m providers.selfdelete CLOUD); the shutdown command is the "
                        "fallback")
    parser.add_argument("--end-grace", type=float, metavar="SECONDS",
                        help="after the engine ends: shut down when DIR/collected appears or "
                        "after this many seconds (absent: not on the run's end, e.g. --keep)")
    parser.add_argument("--idle-minutes", type=float, metavar="M",
                        help="shut down M minutes after the engine ended, whatever else")
    parser.add_argument("--pool", action="store_true",
                        help="a sweep pool's machine: DIR/next hands it to the next run (see "
                        "the module's docstring); checked before every shutdown")
    parser.add_argument("--notices", metavar="CLOUD", choices=("aws", "gcp", "azure"),
                        help="watch CLOUD's preemption notices (providers/notices.py): "
                        "checkpoint and stop the engine on one")
    parser.add_argument("--events", metavar="FILE",
                        help="the run's events file: notice events are appended to it")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    workdir = Path(args.workdir)
    received: list[int] = []

    env = dict(os.environ)
    extra: dict[str, str] = {}
    try:
        if args.env_file:
            extra = read_env_file(args.env_file, args.remove_env_file)
        env.update(extra)
        if args.container:
            keys = {*extra, *(k for k in args.pass_env if k in env)}
            command = container_command(command, sorted(keys), args.gpus)
        child = subprocess.Popen(command, cwd=workdir, stdin=subprocess.DEVNULL, env=env)
    except (OSError, ValueError) as exc:
        print(f"dqlctl: could not start the engine: {exc}", flush=True)
        write_json_atomic(workdir / "exit.json", {"exit_code": 127, "signal": None,
                                                  "reason": f"could not start: {exc}",
                                                  "ended_at": time.time()})
        return self_care(args, workdir, 127)

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        try:
            if child.returncode is None:
                child.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)

    write_json_atomic(workdir / "job.json", {"pid": child.pid, "supervisor_pid": os.getpid(),
                                             "started_at": time.time(), "argv": command})
    notices = NoticeHandler(args, child, {**os.environ, **extra}) if args.notices else None
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
    sig_name = signal.Signals(-code).name if code < 0 else None
    exit_code = code if code >= 0 else 128 - code
    record: dict[str, object] = {
        "exit_code": exit_code,
        "signal": sig_name,
        "requested_stop": bool(received),
    }
    if notices is not None:
        record.update(notices.ended())
    record["ended_at"] = time.time()
    write_json_atomic(workdir / "exit.json", record)
    return self_care(args, workdir, exit_code)


def append_event(path: str | None, event: str, **fields: object) -> None:
    """One line in the engine's events format (engine/events.py), appended in one write."""
    if not path:
        return
    line = json.dumps({"v": 1, "ts": round(time.time(), 3), "event": event, **fields},
                      separators=(",", ":"))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


class NoticeHandler:
    """Watches the cloud's notices in a thread (providers/notices.py) and acts on them: the
    event, then SIGTERM (a preemption: checkpoint and stop) or SIGUSR1 (a rebalance
    recommendation: checkpoint and go on) to the engine."""

    def __init__(self, args: argparse.Namespace, child: subprocess.Popen[bytes],
                 env: dict[str, str]) -> None:
        from providers.notices import watch, watcher_for

        self.events = args.events
        self.child = child
        self.watcher = watcher_for(args.notices, env)
        self.preempt: object = None
        self.stop = threading.Event()
        threading.Thread(target=watch, args=(self.watcher, self.on_notice, self.stop),
                         kwargs={"on_error": lambda m: print(m, flush=True)},
                         daemon=True, name="notices").start()

    def on_notice(self, notice: object) -> None:
        from providers.notices import PREEMPT, Notice

        assert isinstance(notice, Notice)
        fields = notice.fields()
        fields["notice"] = fields.pop("kind")
        if notice.kind == PREEMPT:
            fields["window_s"] = self.watcher.window_s
        append_event(self.events, "notice", **fields)
        preempt = notice.kind == PREEMPT
        print(f"dqlctl: {notice.cloud} {notice.kind} notice ({notice.action}): "
              + ("checkpointing and stopping the engine" if preempt
                 else "checkpointing the engine"), flush=True)
        if preempt and self.preempt is None:
            self.preempt = notice
        sig = signal.SIGTERM if preempt else signal.SIGUSR1
        try:
            if self.child.returncode is None:
                self.child.send_signal(sig)
        except ProcessLookupError:
            pass

    def ended(self) -> dict[str, object]:
        """What exit.json says of the notice the run ended on (none: {}); acknowledged now that
        the engine has uploaded its checkpoint and ended (Azure)."""
        from providers.notices import Notice, NoticeError

        self.stop.set()
        notice = self.preempt
        if not isinstance(notice, Notice):
            return {}
        try:
            acknowledged = self.watcher.acknowledge(notice)
        except NoticeError as exc:
            print(f"dqlctl: could not acknowledge the notice: {exc}", flush=True)
            acknowledged = False
        if acknowledged:
            append_event(self.events, "notice_acknowledged", cloud=notice.cloud,
                         event_id=notice.event_id)
        return {"notice": notice.fields(), "acknowledged": acknowledged,
                "reason": f"preempted: {notice.cloud} {notice.action} notice"}


def self_care(args: argparse.Namespace, workdir: Path, exit_code: int) -> int:
    """After the engine's end: wait for the first rule that fires, then shut the machine down.
    Returns 0 (the run's outcome is in exit.json, not in the supervisor's own status)."""
    if not args.shutdown_command:
        return 0
    ended = time.monotonic()
    end_at = ended + args.end_grace if args.end_grace is not None else None
    idle_at = ended + args.idle_minutes * 60 if args.idle_minutes is not None else None
    if end_at is None and idle_at is None:
        return 0
    marker = workdir / COLLECTED
    why = None
    while why is None:
        now = time.monotonic()
        if args.pool and (workdir / NEXT).exists():
            why = handed_over(workdir)
            if why is None:
                return 0
        elif end_at is not None and marker.exists():
            why = "collected"
        elif end_at is not None and now >= end_at:
            why = f"run ended {args.end_grace:.0f} s ago"
        elif idle_at is not None and now >= idle_at:
            why = f"no engine for {args.idle_minutes:g} min"
        else:
            deadlines = [d for d in (end_at, idle_at) if d is not None]
            time.sleep(max(0.0, min(POLL_S, min(deadlines) - now)))
    if args.pool and not claim_shutdown(workdir):
        why = handed_over(workdir)
        if why is None:
            return 0
    argv = shlex.split(args.shutdown_command)
    record: dict[str, object] = {"reason": why, "command": argv, "at": time.time(),
                                 "engine_exit_code": exit_code}
    if args.self_delete and delete_self(args.self_delete, workdir, why, record):
        write_json_atomic(workdir / "selfcare.json", record)
        return 0
    print(f"dqlctl: shutting the machine down ({why}): {shlex.join(argv)}", flush=True)
    try:
        done = subprocess.run(argv, cwd=workdir, stdin=subprocess.DEVNULL, timeout=300)
        record["returncode"] = done.returncode
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"dqlctl: the shutdown failed: {exc}", flush=True)
        record["error"] = str(exc)
    write_json_atomic(workdir / "selfcare.json", record)
    return 0


def claim_shutdown(workdir: Path) -> bool:
    """Pool: create ``DIR/next`` saying ``shutdown`` (no controller may hand the machine over
    from now on); False when a controller handed it over first."""
    try:
        fd = os.open(workdir / NEXT, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return (workdir / NEXT).read_text(encoding="utf-8").strip() == SHUTDOWN_CLAIM
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(SHUTDOWN_CLAIM + "\n")
    return True


def handed_over(workdir: Path, wait_s: float | None = None) -> str | None:
    """Pool: the machine was handed to the run whose folder ``DIR/next`` names. None once that
    run's engine has started (its supervisor carries the self-care now: recorded in
    ``selfcare.json``); why to shut down when it has not within ``HANDOVER_S``."""
    text = (workdir / NEXT).read_text(encoding="utf-8").strip()
    if text == SHUTDOWN_CLAIM or not text:
        return "shutting down already"
    target = Path(text)
    deadline = time.monotonic() + (HANDOVER_S if wait_s is None else wait_s)
    while not ((target / "job.json").exists() or (target / "exit.json").exists()):
        if time.monotonic() >= deadline:
            return f"handed over to {target.name}, whose engine never started"
        time.sleep(POLL_S)
    write_json_atomic(workdir / "selfcare.json", {"reason": "handed over", "next": str(target),
                                                  "at": time.time()})
    print(f"dqlctl: the machine was handed over to {target.name}", flush=True)
    return None


def delete_self(cloud: str, workdir: Path, why: str, record: dict[str, object]) -> bool:
    """Ask ``cloud`` to delete this machine (``providers.selfdelete``); whether it accepted.
    What was tried goes into ``record`` (``self_delete``)."""
    argv = [sys.executable, "-m", "providers.selfdelete", cloud]
    print(f"dqlctl: deleting the machine ({why}): {shlex.join(argv)}", flush=True)
    try:
        done = subprocess.run(argv, cwd=workdir, stdin=subprocess.DEVNULL, timeout=300)
        code: int | None = done.returncode
        error = None
    except (OSError, subprocess.SubprocessError) as exc:
        code, error = None, str(exc)
    record["self_delete"] = {"cloud": cloud, "returncode": code, "error": error}
    return code == 0


if __name__ == "__main__":
    sys.exit(main())
