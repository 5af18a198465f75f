"""Reading what a run's job wrote: its handle, whole new lines of its log and event files
(``Follower``), and the fold of engine events into the registry row (``apply_engine_events``).

Nothing here changes a run's state; the modules above decide what the lines mean for it.
"""

from __future__ import annotations

from typing import Any

from dqlctl.context import Context
from dqlctl.registry import Run
from engine.events import TERMINAL_EVENTS, parse_event_line
from providers.base import Instance, JobHandle

# Fields of an engine ``episode`` event kept in ``Run.progress``.
EPISODE_FIELDS = ("episode", "episodes", "reward", "loss", "epsilon", "val_sharpe",
                  "steps_per_s", "env_steps")


def instance_of(run: Run) -> Instance | None:
    """The run's current machine, or None before it has one."""
    return Instance.from_dict(run.instance) if run.instance else None


def job_handle(ctx: Context, run: Run) -> JobHandle | None:
    """The provider's view of the run's job (log, events, exit), or None before it has one."""
    inst = instance_of(run)
    if inst is None:
        return None
    return ctx.provider(run.provider).job(inst, run.spec)


class Follower:
    """Whole lines appended to one of a job's files since the last call; keeps the byte offset.

    A half-written last line waits for its newline, so nothing is printed twice or cut.
    """

    def __init__(self, handle: JobHandle | None, name: str, offset: int = 0) -> None:
        self.handle = handle
        self.name = name
        self.offset = offset
        self._partial = b""

    def read_lines(self) -> list[str]:
        if self.handle is None:
            return []
        chunk = self.handle.read(self.name, self.offset)
        if not chunk:
            return []
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        return [line.decode("utf-8", errors="replace") for line in lines]

    def rest(self) -> list[str]:
        """Everything left, the unterminated last line included (the job has ended)."""
        lines = self.read_lines()
        if self._partial:
            lines.append(self._partial.decode("utf-8", errors="replace"))
            self._partial = b""
        return lines


def read_all_lines(handle: JobHandle, name: str) -> list[str]:
    """Every line of one of a job's files as it is now."""
    follower = Follower(handle, name)
    lines: list[str] = []
    while True:
        before = follower.offset
        lines.extend(follower.read_lines())
        if follower.offset == before:
            return lines + follower.rest()


def log_tail(ctx: Context, run: Run, n: int) -> list[str]:
    """The last ``n`` lines of the run's engine log (none before it has a job)."""
    handle = job_handle(ctx, run)
    if handle is None or n <= 0:
        return []
    try:
        return read_all_lines(handle, "log")[-n:]
    finally:
        handle.close()


def last_log_line(handle: JobHandle) -> str | None:
    """The job's last non-blank log line (cut to 300 characters), to say why it ended."""
    lines = [x.strip() for x in read_all_lines(handle, "log")[-5:] if x.strip()]
    return lines[-1][:300] if lines else None


def parse_events(lines: list[str]) -> list[dict[str, Any]]:
    """The engine events among ``lines`` (other lines are skipped)."""
    return [e for e in (parse_event_line(x) for x in lines) if e]


def apply_engine_events(ctx: Context, run: Run, events: list[dict[str, Any]]) -> None:
    """Fold engine events into the registry row: progress and metrics, merged into what the row
    holds inside one transaction (``Registry.merge``), so that two processes folding at once
    lose nothing.

    ``progress["best_val_sharpe"]`` and ``progress["best_episode"]`` follow the kept model: the
    episodes whose event says ``best`` (that episode's model became the one kept).
    """
    progress: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    history: list[tuple[str, float, dict[str, Any]]] = []
    for ev in events:
        kind = ev.get("event")
        if kind in HISTORY_EVENTS:
            history += _history(ev, run.progress, progress)
        elif kind == "episode":
            progress.update({k: ev.get(k) for k in EPISODE_FIELDS})
            if ev.get("best"):
                progress["best_val_sharpe"] = ev.get("val_sharpe")
                progress["best_episode"] = ev.get("episode")
        elif kind == "stage":
            progress["stage"] = ev.get("name")
        elif kind == "throughput":  # the run's measured rate: a profile (dqlctl.profiles)
            from dqlctl.profiles import record_from_events

            record_from_events(ctx.home, [ev], run.id)
        elif kind == "trial":
            progress.update({"trial": ev.get("trial"), "trials": ev.get("trials")})
        elif kind == "evaluation" and isinstance(ev.get("metrics"), dict):
            metrics[ev.get("split") or "test"] = ev["metrics"]
        elif kind in TERMINAL_EVENTS:
            progress["engine_status"] = kind
            if kind == "failed":
                progress["engine_reason"] = ev.get("reason")
            if isinstance(ev.get("metrics"), dict) and ev["metrics"]:
                metrics["test"] = ev["metrics"]
    for kind, ts, data in history:  # in the run's history, with the machine's time
        ctx.registry.add_event_once(run.id, kind, ts, data)
    if progress or metrics:
        row = ctx.registry.merge(run.id, progress=progress, metrics=metrics)
        run.progress, run.metrics = row.progress, row.metrics


#: events of the run's machine that go into its history (``dqlctl show``): the cloud's notices
#: (written by the VM's supervisor, providers/local/supervisor.py) and the checkpoint the engine
#: wrote after each
HISTORY_EVENTS = frozenset({"notice", "checkpoint"})


def _history(ev: dict[str, Any], seen: dict[str, Any],
             progress: dict[str, Any]) -> list[tuple[str, float, dict[str, Any]]]:
    """The history entry of ``ev`` (a notice newer than the last one folded, or the first
    checkpoint after it), the fold's marks (``notice_ts``, ``notice_checkpoint_ts``) set in
    ``progress``; ``seen`` is what the row held before this fold."""
    try:
        ts = float(ev["ts"])
    except (KeyError, TypeError, ValueError):
        return []

    def mark(key: str) -> float:
        return float(progress.get(key, seen.get(key)) or 0.0)

    if ev.get("event") == "notice":
        if ts <= mark("notice_ts"):
            return []       # read before (or an old machine's, in the resumed events)
        progress["notice_ts"] = ts
        return [("notice", ts, {k: ev.get(k) for k in NOTICE_FIELDS if ev.get(k) is not None})]
    notice = mark("notice_ts")
    if not notice or ts < notice or mark("notice_checkpoint_ts") >= notice:
        return []
    progress["notice_checkpoint_ts"] = ts
    return [("checkpoint", ts, {"episode": ev.get("episode"), "path": ev.get("path"),
                                "after_notice_s": round(ts - notice, 3)})]


NOTICE_FIELDS = ("cloud", "notice", "action", "deadline", "event_id", "window_s")
