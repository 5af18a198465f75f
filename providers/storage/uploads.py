"""The journal of unfinished uploads dqlctl started, so a killed one can be found and aborted.

A multipart upload S3 never completes is invisible (no listing of the bucket shows it) but its
parts stay billed until someone aborts it, and ``ListMultipartUploads`` does not say who started
an upload. So, before its first part, a store records the upload here, one small JSON file per
upload (the store's URI, the key, the upload id, this host and process); it removes the record
when the upload completes or is aborted. A record whose process is gone (this host, pid dead) is
a stale upload: the next sync of that prefix aborts it (``Store.stale_uploads``) and ``--dry-run``
lists it. Uploads other hosts or other tools started are never touched.

Where: ``$DQLCTL_HOME/uploads``, else ``$XDG_STATE_HOME/dqlctl/uploads`` (~/.local/state).
Standard library only. Writing the journal never fails an upload: at worst an upload is not
recorded (and then not cleaned up), as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from providers.storage.base import PendingUpload


def journal_dir() -> Path:
    home = os.environ.get("DQLCTL_HOME")
    if home:
        return Path(home) / "uploads"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "dqlctl" / "uploads"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def record(store_uri: str, key: str, upload_id: str) -> str:
    """Note an upload as started by this process; the record's path ("" if it could not be
    written)."""
    name = hashlib.sha1(f"{store_uri}\0{key}\0{upload_id}".encode()).hexdigest()[:24]
    path = journal_dir() / f"{name}.json"
    entry = {"store": store_uri, "key": key, "upload_id": upload_id, "pid": os.getpid(),
             "host": socket.gethostname(), "started": time.time()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)
    except OSError:
        return ""
    return str(path)


def forget(journal: str) -> None:
    """Drop a record (the upload completed or was aborted)."""
    if journal:
        with contextlib.suppress(OSError):
            os.unlink(journal)


def stale(store_uri: str, prefix: str) -> list[PendingUpload]:
    """Recorded uploads to ``store_uri`` under ``prefix`` whose process, on this host, is gone.
    Costs one directory listing; no request to the service."""
    folder = journal_dir()
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".json")]
    except OSError:
        return []
    host = socket.gethostname()
    out = []
    for name in names:
        path = folder / name
        try:
            entry: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (entry.get("store") != store_uri or not str(entry.get("key", "")).startswith(prefix)
                or entry.get("host") != host or _alive(int(entry.get("pid", 0)))):
            continue
        out.append(PendingUpload(str(entry["key"]), str(entry["upload_id"]),
                                 float(entry.get("started", 0.0)), str(path)))
    return sorted(out, key=lambda u: (u.key, u.started))
