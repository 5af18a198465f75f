"""What every screen's model shares: a worker's own Context, one-line errors, state colours."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dqlctl import registry as reg
from dqlctl.context import Context

STATE_STYLES: dict[str, str] = {
    reg.PENDING: "yellow",
    reg.PROVISIONING: "yellow",
    reg.BOOTSTRAPPING: "yellow",
    reg.RUNNING: "bold green",
    reg.COLLECTING: "cyan",
    reg.SUCCEEDED: "green",
    reg.FAILED: "bold red",
    reg.CANCELLED: "bright_black",
    reg.PREEMPTED: "magenta",
    reg.RECOVERING: "magenta",
}


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextmanager
def worker_context(base: Context) -> Iterator[Context]:
    """A Context for one worker thread: the same home, clock, config and provider table, its own
    SQLite connection (a connection may only be used by the thread that opened it)."""
    ctx = dataclasses.replace(base, _registry=None)
    try:
        yield ctx
    finally:
        ctx.close()


def usd(price: float | None, unit: str = "") -> str:
    """A price as the screens write it: 3 decimals below $10, 2 above; "n/a" when unknown."""
    if price is None:
        return "n/a"
    return (f"${price:.3f}" if price < 10 else f"${price:.2f}") + unit


def num(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"
