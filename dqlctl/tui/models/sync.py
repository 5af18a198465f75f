"""The sync screen's model: what the confirmation before a sync with ``--delete`` says. Textual-
free: it reads a dry run's ``SyncResult`` (the plan) and names the files that will go."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from providers.sync import human_size

MAX_NAMED = 8       # files the confirmation names; the rest are counted


@dataclass(frozen=True)
class DeleteConfirmation:
    """The question, the files that will go (at most ``MAX_NAMED``) and how many more."""

    question: str
    detail: str
    deletes: int


def delete_confirmation(plan: Any, dst: str) -> DeleteConfirmation | None:
    """What to ask before a sync whose plan (a dry run) deletes files at ``dst``; None when it
    deletes nothing (no question to ask)."""
    going = [f for f in plan.files if f.action == "delete"]
    if not going:
        return None
    size = sum(f.size for f in going)
    names = [f"  − {f.key}" for f in going[:MAX_NAMED]]
    if len(going) > MAX_NAMED:
        names.append(f"  … and {len(going) - MAX_NAMED} more")
    copies = f"{plan.copied} to copy first; " if plan.copied else ""
    detail = (f"{len(going)} file{'s' if len(going) != 1 else ''} ({human_size(size)}) at {dst} "
              f"that the source lacks will be removed ({copies}deletes only after every copy "
              "succeeded, and no more than these):\n" + "\n".join(names))
    return DeleteConfirmation(f"Delete {len(going)} file{'s' if len(going) != 1 else ''} at "
                              "the destination?", detail, len(going))
