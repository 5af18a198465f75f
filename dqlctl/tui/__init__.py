"""The Textual control center (``dqlctl`` with no verb, ``dqlctl tui [RUN]``). Textual loads only
in ``run_tui``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dqlctl.context import Context


def run_tui(ctx: Context | None = None, run: str | None = None) -> int:
    """Open the TUI on ``ctx`` (default: $DQLCTL_HOME); returns the exit code. Quitting leaves
    every run as it is.

    ``run`` (a run id, a unique id prefix, or a name: the newest run of that name, as the CLI's
    verbs resolve it) opens the app on that run's view, the dashboard under it (Esc goes back);
    a run the registry does not know is a one-line error and exit 2 before the app starts."""
    import sys

    try:
        from dqlctl.tui.app import DqlApp
    except ImportError as exc:  # textual is the `tui` extra
        from providers.base import install_hint

        print(f"dqlctl: error: the TUI needs textual ({exc}); install dqlctl[tui]: "
              f"{install_hint('tui')}", file=sys.stderr)
        return 2
    from dqlctl.context import Context
    from dqlctl.errors import EXIT_USAGE
    from dqlctl.registry import RegistryError

    ctx = ctx or Context()
    try:
        run_id = None
        if run is not None:
            try:
                run_id = ctx.registry.resolve(run).id
            except RegistryError as exc:
                print(f"dqlctl: error: {exc}", file=ctx.stderr)
                return EXIT_USAGE
        app = DqlApp(ctx, freeze_gc=True, open_run=run_id)
        app.run()
    finally:
        ctx.close()
    return app.return_code or 0
