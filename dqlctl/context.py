"""The environment a command runs in, injected (httpie's ``Environment``): tests pass their own.

Where things live (the XDG base directories): runs and the registry in ``$XDG_DATA_HOME/dqlctl``
(``~/.local/share/dqlctl``), ``config.toml`` in ``$XDG_CONFIG_HOME/dqlctl`` (``~/.config/dqlctl``),
the live-price cache in ``$XDG_CACHE_HOME/dqlctl`` (``providers.prices.catalog.cache_dir``).
A config file at the old place (``~/.local/share/dqlctl/config.toml``) is still read when the new
one does not exist. An explicit home (``$DQLCTL_HOME``, or ``Context(home=...)`` in tests) holds
all three itself, so several installations or test runs never share a file.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from dqlctl.registry import Registry, data_home, default_home


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
    def config_path(self) -> Path:
        """``config.toml``: in ``$XDG_CONFIG_HOME/dqlctl`` for the default home (the old
        ``<home>/config.toml`` is read while the new one does not exist), else in the home."""
        old = self.home / "config.toml"
        if self.home != data_home():
            return old
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        new = Path(base) / "dqlctl" / "config.toml"
        return new if new.exists() or not old.exists() else old

    @property
    def config(self) -> dict[str, Any]:
        """``config_path`` (absent means defaults). ``[providers.NAME]`` tables hold
        provider settings, e.g. ``[providers.aws] ssh_host_override = "127.0.0.1:2222"``."""
        if self._config is None:
            import tomllib

            path = self.config_path
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

                raise UsageError(f"{self.config_path} [providers.{name}]: {exc}") \
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
