"""The engine's event stream: one JSON object per line in ``<results>/events.jsonl``.

This is the contract between the engine and the control center (dqlctl follows a run through it,
locally from the file and remotely from the log stream). Standard library only: dqlctl imports
this module on its fast path.

Every event has ``v`` (schema version), ``ts`` (unix seconds, float) and ``event`` (its kind).
Kinds and their fields:

- ``run_started``: experiment, command, agent_type, episodes, data_file, device, seed, pid;
  params_from (where `--params_file` took the tuned settings from), when given
- ``stage``: name (``tune`` | ``train`` | ``evaluate`` | ``report``)
- ``episode``: episode (1-based), episodes, reward, loss, epsilon, val_sharpe, steps_per_s, env_steps
- ``trial``: trial, trials, params, score (tuning)
- ``throughput``: after training, its profile record (``engine.profile``: agent_type,
  hidden_sizes, batch_size, n_envs, device, device_name, steps_per_s, updates_per_s, ...)
- ``checkpoint``: episode, path
- ``evaluation``: split, metrics (a dict)
- ``equity``: split (``val`` | ``test``), episode (the model's episode; None for the final test),
  agent, buy_and_hold: the two equity curves over the split from 1.0, thinned to at most 200
  points each (``engine.metrics.equity_points``). ``val`` is sent when validation improves.
- ``warning``: message
- ``finished``: status ("succeeded"), metrics (test metrics dict, may be empty)
- ``failed``: reason (one line)

When asked (``--events_stdout``), each event is also printed on stdout as ``@dql-event <json>``
so a watcher that only sees the log stream (SSH, container logs) gets the same events.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

SCHEMA_VERSION = 1
STDOUT_PREFIX = "@dql-event "
TERMINAL_EVENTS = frozenset({"finished", "failed"})


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class EventWriter:
    """Appends events to ``path`` (line-buffered, flushed per event) and optionally to stdout."""

    def __init__(self, path: str | os.PathLike[str] | None, echo_stdout: bool = False,
                 stream: TextIO | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.echo_stdout = echo_stdout
        self._stream = stream
        self._fh: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"v": SCHEMA_VERSION, "ts": round(time.time(), 3), "event": event}
        record.update(_clean(fields))
        line = json.dumps(record, separators=(",", ":"), allow_nan=False)
        if self._fh is not None:
            self._fh.write(line + "\n")
            self._fh.flush()
        if self.echo_stdout:
            out = self._stream or sys.stdout
            out.write(STDOUT_PREFIX + line + "\n")
            out.flush()
        return record

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_event_line(line: str) -> dict[str, Any] | None:
    """An event from a line of ``events.jsonl`` or of a log stream; None if it is not one."""
    line = line.strip()
    if line.startswith(STDOUT_PREFIX):
        line = line[len(STDOUT_PREFIX):]
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or "event" not in record:
        return None
    return record


def read_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every complete event in a file (a trailing half-written line is ignored)."""
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            record = parse_event_line(line)
            if record is not None:
                yield record
