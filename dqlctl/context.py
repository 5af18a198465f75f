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
    _config: dict[str, Any] | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.home / "registry.db", clock=self.clock)
        return self._registry

    @property
    def config(self) -> dict[str, Any]:
        """``<home>/config.toml`` (absent means defaults). ``[providers.NAME]`` tables hold
        provider settings, e.g. ``[providers.aws] ssh_host_override = "127.0.0.1:2222"``."""
        if self._config is None:
            import tomllib

            path = self.home / "config.toml"
            try:
                with open(path, "rb") as fh:
                    self._config = tomllib.load(fh)
            except FileNotFoundError:
                self._config = {}
            except tomllib.TOMLDecodeError as exc:
                from dqlctl.errors import UsageError

                raise UsageError(f"{path}: not valid TOML ({exc}); fix or remove it") from None
        return self._config

    def provider(self, name: str) -> Any:
        if name not in self.providers:
            from providers import get_provider

            settings = dict(self.config.get("providers", {}).get(name, {}))
            try:
                self.providers[name] = get_provider(name, home=str(self.home), **settings)
            except TypeError as exc:
                from dqlctl.errors import UsageError

                raise UsageError(f"{self.home / 'config.toml'} [providers.{name}]: {exc}") \
                    from None
        return self.providers[name]

    @property
    def registry_id(self) -> str:
        """This registry's own id (``dqlctl.owner``): the owner tag of what it creates."""
        from dqlctl.owner import registry_id

        return registry_id(self.home)

    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None
