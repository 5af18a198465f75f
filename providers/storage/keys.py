"""Keys are data, never paths: the ONE place an object key becomes a local path.

An object key comes from a listing (a bucket anyone may write to, a VM's results folder, an
experiment's remote checkpoints), so it is untrusted input. :func:`local_path` maps it to a path
under a destination folder, or refuses it with :class:`UnsafeKey` (one line naming the key, exit
code 2) when writing it could leave that folder or cannot be written as given: ``..`` or ``.``
segments, an absolute key, a backslash, an empty segment (``a//b``, a trailing ``/``), NUL or
another control character, a segment or a whole path too long for the filesystem.

Used by the local store (every put, read and delete), by ``sync`` before anything is written,
by ``--resume``'s checkpoint fetch (engine/checkpoint.py) and by result collection from a VM
(providers/vm.py). Standard library only.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from providers.storage.base import EXIT_BAD_INPUT, StorageError

NAME_MAX = 255          # bytes per path segment (ext4, xfs, btrfs, tmpfs)
PATH_MAX = 4096         # bytes of a whole path (Linux)
_CONTROL = re.compile("[\x01-\x1f\x7f]")     # NUL has its own message


class UnsafeKey(StorageError):
    """A key that would be written outside its destination, or cannot be written as given."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"refusing object key {key!r}: {why}; nothing was written",
                         code=EXIT_BAD_INPUT)
        self.key = key
        self.why = why


@functools.lru_cache(maxsize=64)
@functools.lru_cache(maxsize=64)
def _limits(root: str) -> tuple[int, int]:
    """The filesystem's name and path limits at ``root`` (or its nearest existing parent);
    kept per root (a sync checks every key against the same one: three syscalls a key)."""
    path = root
    while path and not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return (os.pathconf(path, "PC_NAME_MAX"), os.pathconf(path, "PC_PATH_MAX"))
    except (OSError, ValueError):
        return NAME_MAX, PATH_MAX


def check_key(key: str, root: str | os.PathLike[str] | None = None) -> str:
    """``key`` unchanged when it is a safe relative path (see the module docstring), else
    UnsafeKey. ``root`` (the destination folder) sets the filesystem's name limits."""
    if not key:
        raise UnsafeKey(key, "empty key")
    if "\x00" in key:
        raise UnsafeKey(key, "it contains NUL")
    if _CONTROL.search(key):
        raise UnsafeKey(key, "it contains a control character")
    if "\\" in key:
        raise UnsafeKey(key, "it contains a backslash")
    if key.startswith("/"):
        raise UnsafeKey(key, "it is absolute")
    root = os.fspath(root) if root is not None else None
    name_max, path_max = _limits(root) if root is not None else (NAME_MAX, PATH_MAX)
    for segment in key.split("/"):
        if segment == "":
            raise UnsafeKey(key, "it has an empty path segment")
        if segment in (".", ".."):
            raise UnsafeKey(key, f"it has a {segment!r} segment")
        # a character is at most 4 bytes in the filesystem's encoding: most keys need no encode
        if len(segment) * 4 > name_max and len(os.fsencode(segment)) > name_max:
            raise UnsafeKey(key, f"a segment is longer than {name_max} bytes")
    base = len(os.fsencode(root)) + 1 if root is not None else 0
    if base + len(os.fsencode(key)) >= path_max:
        raise UnsafeKey(key, f"the path would be longer than {path_max} bytes")
    return key


def local_path(root: str | os.PathLike[str], key: str) -> Path:
    """Where ``key`` lives under the folder ``root``; UnsafeKey if it would leave it."""
    return Path(local_file(os.fspath(root), key))


def local_file(root: str, key: str) -> str:
    """:func:`local_path` as a string (what a sync asks for once per file: no pathlib)."""
    check_key(key, root)
    # belt and braces: the lexical checks above already exclude every way out
    inside = os.path.abspath(root)
    path = os.path.normpath(os.path.join(inside, key))
    if not path.startswith(inside.rstrip("/") + "/"):
        raise UnsafeKey(key, f"it leaves {root}")
    return os.path.join(root, key)
