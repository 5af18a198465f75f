"""The engine images pushed from here: ``images.json`` in dqlctl's home, the last push to each
provider (written by ``dqlctl image push``), which ``launch --runtime docker`` on that provider
runs, pinned to its digest, when no ``--image`` is given. Standard library only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

IMAGES_FILE = "images.json"


def remember_push(home: Path, pushed: dict[str, Any]) -> None:
    """The last image pushed to each provider (``launch --runtime docker``'s default)."""
    path = home / IMAGES_FILE
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known[pushed["provider"]] = {**pushed, "pushed_at": time.time()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(known, indent=1))
    tmp.replace(path)


def last_pushed(home: Path, provider: str) -> str | None:
    """The digest-pinned reference of the last image pushed to ``provider``; None."""
    try:
        entry = json.loads((home / IMAGES_FILE).read_text()).get(provider) or {}
    except (OSError, ValueError, AttributeError):
        return None
    return entry.get("pinned") or entry.get("reference")
