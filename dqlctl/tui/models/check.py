"""Providers' ``check()`` answers: cached for the launch form, all of them for the check
screen (what ``dqlctl check`` prints)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from dqlctl.context import Context
from dqlctl.tui.models.common import one_line

# How long a provider's ``check()`` answer is reused: typing does not ask again, and a fix made in
# another terminal (``aws configure``, ``az login``) shows within this long.
CHECK_TTL_S = 10.0


def check_one(ctx: Context, name: str) -> Any:
    """``ctx.provider(name).check()``; a failure to check (no SDK, an API that does not answer)
    is a failed check whose one item says why."""
    from providers.base import CheckItem, CheckResult

    try:
        return ctx.provider(name).check()
    except Exception as exc:  # noqa: BLE001 - shown on the provider's row
        return CheckResult(name, False, [CheckItem("check", False, one_line(exc))])


def check_all(ctx: Context) -> list[Any]:
    """Every compute provider's ``check()`` answer, by name: the check screen's lines."""
    from providers import provider_names

    return [check_one(ctx, name) for name in provider_names()]


class CheckCache:
    """Providers' ``check()`` answers, kept ``ttl_s``: typing does not ask again. One check per
    provider at a time: a second caller waits for the first's answer instead of asking too."""

    def __init__(self, ttl_s: float = CHECK_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._results: dict[str, tuple[float, Any]] = {}

    def fresh(self, name: str) -> Any | None:
        """The cached answer for ``name`` if it is still fresh, else None."""
        hit = self._results.get(name)
        if hit is not None and self.clock() - hit[0] < self.ttl_s:
            return hit[1]
        return None

    def get(self, ctx: Context, name: str) -> Any:
        """``ctx.provider(name).check()``, or its cached answer; a failure to check is a failed
        check (CheckResult)."""
        with self._lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            result = self.fresh(name)
            if result is None:
                result = check_one(ctx, name)
                self._results[name] = (self.clock(), result)
            return result


def credentials_error(result: Any) -> str | None:
    """A failed ``check()`` as the provider row shows it: each failing item and its fix."""
    if result.ok:
        return None
    bad = [item for item in result.items if not item.ok] or result.items
    return "\n".join(f"{result.provider}: {item.name}: {item.detail}"
                     + (f" (fix: {item.fix})" if item.fix else "") for item in bad)
