"""The environment a command runs in, injected (httpie's ``Environment``): tests pass their own."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from dqlctl.registry import Registry, default_home


@dataclass
class Context:
    home: Path = field(default_factory=default_home)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    clock: Callable[[], float] = time.time
    debug: bool = False
    # name -> provider object; filled lazily from providers.COMPUTE_PROVIDERS
    providers: dict[str, Any] = field(default_factory=dict)
    _registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.home / "registry.db", clock=self.clock)
        return self._registry

    def provider(self, name: str) -> Any:
        if name not in self.providers:
            from providers import get_provider

            self.providers[name] = get_provider(name)
        return self.providers[name]

    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None
