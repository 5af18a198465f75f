"""Who owns what dqlctl creates: the registry's own id and the OS user, as the tags every cloud
resource carries (``OWNER_TAG``, ``USER_TAG`` beside ``RUN_TAG``).

The registry id is random, created once per dqlctl home and kept in ``<home>/registry.id``
beside registry.db: two people (or two homes) sharing a cloud account each own only what their
own registry launched, so ``down --orphans`` / ``gc`` never remove a colleague's runs.
"""

from __future__ import annotations

import getpass
import os
import secrets
from pathlib import Path

from providers.base import OWNER_TAG, RUN_TAG, USER_TAG, label_value

ID_FILE = "registry.id"


def registry_id(home: str | os.PathLike[str]) -> str:
    """This home's registry id (16 hex digits), created on first use; the first writer wins."""
    path = Path(home) / ID_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # another process made it a moment ago: use theirs
        return path.read_text().strip()
    new = secrets.token_hex(8)
    with os.fdopen(fd, "w") as fh:
        fh.write(new + "\n")
    return new


def os_user() -> str:
    """The OS user as a label value (``unknown`` when there is none to find)."""
    try:
        return label_value(getpass.getuser()) or "unknown"
    except (KeyError, OSError):
        return "unknown"


def owner_tags(home: str | os.PathLike[str], run_id: str) -> dict[str, str]:
    """The tags a run's resources carry: its run id, this registry's id and the OS user."""
    return {RUN_TAG: run_id, OWNER_TAG: registry_id(home), USER_TAG: os_user()}
