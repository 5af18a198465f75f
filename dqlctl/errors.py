"""Errors the operator sees as one line, each with its exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_PROVIDER = 3


class DqlctlError(Exception):
    """Shown as ``dqlctl: error: <message>`` and exits with ``exit_code``.

    ``field`` names the launch-request field it is about (``"episodes"``, ``"data"``,
    ``"instance_type"``...), so a form can show it on that row; None when it is about no single
    field."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        self.field = field


class UsageError(DqlctlError):
    """Bad input (exit 2)."""

    exit_code = EXIT_USAGE


class ProviderFailure(DqlctlError):
    """A provider or credential problem (exit 3); ``field`` carried over from the
    ``ProviderError`` it comes from."""

    exit_code = EXIT_PROVIDER
