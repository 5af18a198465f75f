"""The Textual control center (``dqlctl`` with no verb). Textual loads only in ``run_tui``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dqlctl.context import Context


def run_tui(ctx: Context | None = None) -> int:
    """Open the TUI on ``ctx`` (default: $DQLCTL_HOME); returns the exit code. Quitting leaves
    every run as it is."""
    try:
        from dqlctl.tui.app import DqlApp
    except ImportError as exc:  # textual is the `tui` extra
        import sys

        from providers.base import install_hint

        print(f"dqlctl: error: the TUI needs textual ({exc}); install dqlctl[tui]: "
              f"{install_hint('tui')}", file=sys.stderr)
        return 2
    from dqlctl.context import Context

    ctx = ctx or Context()
    try:
        app = DqlApp(ctx, freeze_gc=True)
        app.run()
    finally:
        ctx.close()
    return app.return_code or 0
