"""The verbs people type, one module each (pipx's ``commands/``).

Each module defines ``register(subparsers)``, which adds its parser and sets ``func=cmd(ctx,
args) -> int`` as its default; ``dqlctl.cli`` registers the modules in ``VERB_MODULES`` (in
``--help`` order), parses, dispatches and turns errors into exit codes. A verb module imports only
the standard library (and the light ``dqlctl.errors`` / ``dqlctl.render``) at its top: the work
(``dqlctl.runs``, a provider, prices) is imported when the verb runs.
"""

from __future__ import annotations

import json
from typing import Any

VERB_MODULES: tuple[str, ...] = (
    "dqlctl.verbs.launch", "dqlctl.verbs.ps", "dqlctl.verbs.show", "dqlctl.verbs.logs",
    "dqlctl.verbs.down", "dqlctl.verbs.gc", "dqlctl.verbs.stop", "dqlctl.verbs.ssh", "dqlctl.verbs.check",
    "dqlctl.image_cmd", "dqlctl.verbs.cost", "dqlctl.verbs.profile", "dqlctl.verbs.sync", "dqlctl.verbs.sweep",
    "dqlctl.verbs.tui")


def resolve_run(ctx: Any, ref: str) -> Any:
    """The run ``ref`` names (id, unique id prefix or name); a usage error when none does."""
    from dqlctl.errors import UsageError
    from dqlctl.registry import RegistryError

    try:
        return ctx.registry.resolve(ref)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None


def print_json(ctx: Any, data: Any) -> None:
    """``data`` as indented JSON on the context's stdout."""
    print(json.dumps(data, indent=2), file=ctx.stdout)
