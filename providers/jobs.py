"""Job handles: read a run's log and events from a byte offset and tell whether it has ended.

A job on any machine has the same layout, written by ``providers.local.supervisor``::

    <workdir>/engine.log     the engine's stdout and stderr
    <workdir>/job.json       {"pid": engine pid, "supervisor_pid": ...}, once started
    <workdir>/exit.json      {"exit_code": ..., "signal": ..., "notice": ...}, once ended (atomic)
    <results>/<experiment>/events.jsonl

``LocalJobHandle`` reads it from this machine's disk; ``RemoteJobHandle`` over SSH/SFTP, and
reconnects (with backoff) when the connection drops, resuming from the caller's offset.
``stop()`` asks the job to end (SIGTERM to its supervisor: the engine checkpoints first);
``RemoteJobHandle.mark_collected()`` tells a VM whose run has ended that its results are safe,
so it shuts itself down now (providers/local/supervisor.py, self-care).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from providers.base import JobStatus, ProviderError, SshTarget

VANISHED = ("the run's process vanished without an exit status "
            "(killed with its supervisor, or the machine restarted)")


def status_from(exit_record: dict[str, Any] | None, alive: Callable[[], bool],
                reread: Callable[[], dict[str, Any] | None]) -> JobStatus:
    """The job's state from its exit record and whether its supervisor still runs."""
    if exit_record is None and alive():
        return JobStatus(True)
    if exit_record is None:
        exit_record = reread()  # it may have ended between the two looks
    if exit_record is None:
        return JobStatus(False, None, VANISHED)
    sig = exit_record.get("signal")
    reason = exit_record.get("reason") or (f"engine killed by {sig}" if sig else None)
    notice = exit_record.get("notice")
    return JobStatus(False, int(exit_record["exit_code"]), reason,
                     notice if isinstance(notice, dict) else None)


def _parse(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class LocalJobHandle:
    def __init__(self, workdir: str, events_path: str | None,
                 alive: Callable[[], bool]) -> None:
        self.workdir = Path(workdir)
        self.paths = {"log": self.workdir / "engine.log",
                      "events": Path(events_path) if events_path else None}
        self._alive = alive

    def read(self, name: str, offset: int) -> bytes:
        path = self.paths[name]
        if path is None:
            return b""
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                return fh.read()
        except FileNotFoundError:
            return b""

    def _exit(self) -> dict[str, Any] | None:
        try:
            return _parse((self.workdir / "exit.json").read_bytes())
        except FileNotFoundError:
            return None

    def status(self) -> JobStatus:
        return status_from(self._exit(), self._alive, self._exit)

    def stop(self) -> bool:
        """SIGTERM to the supervisor, which passes it to the engine (it checkpoints and exits).
        False when the job is not running."""
        job = _parse(_read(self.workdir / "job.json"))
        if job is None or self._exit() is not None or not self._alive():
            return False
        try:
            os.kill(int(job["supervisor_pid"]), signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        pass


class RemoteJobHandle:
    """The same over SSH. Survives dropped connections: each call reconnects if needed."""

    def __init__(self, target: SshTarget, workdir: str, events_path: str,
                 retries: int = 5, backoff_s: float = 0.5) -> None:
        self.target = target
        self.workdir = workdir
        self.paths = {"log": f"{workdir}/engine.log", "events": events_path}
        self.retries = retries
        self.backoff_s = backoff_s
        self._session: Any = None
        self.reconnects = 0

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        from providers.ssh import HostKeyMismatch, SshSession

        delay = self.backoff_s
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                if self._session is None or not self._session.connected:
                    if self._session is not None:
                        self._session.close()
                        self.reconnects += 1
                    self._session = SshSession(self.target).connect()
                return fn(self._session)
            except HostKeyMismatch:
                raise
            except Exception as exc:
                # the channel broke (socket, EOF, paramiko.SSHException, our own SSH errors):
                # drop the session and try again; anything else is a bug and propagates
                if not isinstance(exc, OSError | EOFError | ProviderError) and \
                        not type(exc).__module__.startswith("paramiko"):
                    raise
                last = exc
                if self._session is not None:
                    self._session.close()
                    self._session = None
                    self.reconnects += 1
                if attempt < self.retries:
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
        raise ProviderError(f"lost the connection to {self.target.host}: {last}")

    def read(self, name: str, offset: int) -> bytes:
        return self._call(lambda s: s.read_from(self.paths[name], offset))

    def _exit(self) -> dict[str, Any] | None:
        return _parse(self._call(lambda s: s.read_from(f"{self.workdir}/exit.json", 0)))

    def _alive(self) -> bool:
        def probe(s: Any) -> bool:
            job = _parse(s.read_from(f"{self.workdir}/job.json", 0))
            if job is None:  # start_remote_job waits for it: gone means the VM lost it
                return False
            code, _, _ = s.run(f"kill -0 {int(job['supervisor_pid'])}", timeout=30)
            return code == 0
        return bool(self._call(probe))

    def status(self) -> JobStatus:
        return status_from(self._exit(), self._alive, self._exit)

    def stop(self) -> bool:
        """SIGTERM to the supervisor on the VM (see ``LocalJobHandle.stop``)."""
        def term(s: Any) -> bool:
            job = _parse(s.read_from(f"{self.workdir}/job.json", 0))
            if job is None or s.exists(f"{self.workdir}/exit.json"):
                return False
            code, _, _ = s.run(f"kill -TERM {int(job['supervisor_pid'])}", timeout=30)
            return code == 0
        return bool(self._call(term))

    def mark_collected(self) -> bool:
        """Tell the VM's supervisor the results are safe ("collected, shut down now"): it shuts
        the machine down at once instead of waiting out its collect grace. False when the job
        has not ended (the supervisor only looks once the engine is done)."""
        return bool(self._call(lambda s: mark_collected(s, self.workdir)))

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def mark_collected(session: Any, workdir: str) -> bool:
    """Over an SSH ``session``: touch ``workdir/collected`` once the job has ended (its
    ``exit.json`` is there): the VM's supervisor shuts the machine down at once. False when the
    job has not ended."""
    from providers.ssh import q

    if not session.exists(f"{workdir}/exit.json"):
        return False
    code, _, _ = session.run(f"touch {q(workdir + '/collected')}", timeout=30)
    return bool(code == 0)
