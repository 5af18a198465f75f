"""Local disk as a store: ``/abs/path`` or ``file:///abs/path``. Standard library only.

The "bucket" is a root folder (``/`` for a URI) and keys are paths under it. A put writes a
hidden temporary file in the destination folder and renames it over the key, so a reader sees
the old file or the whole new one. Temporary files left by a killed process are never listed,
and are removed by a later listing once their owner is gone. md5 is computable (by reading the
file), not stored: the local disk declares no hash of its own.

It lives in the storage leaf, not in ``providers/local/``: it is the engine's default store (a
bare path is ``file://``) and the reference every backend is tested against, and the engine may
import the storage leaf but no cloud's package; the local *compute* provider does not need it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from providers.procs import pid_exists
from providers.storage.base import (
    EXIT_BAD_INPUT,
    MD5,
    ObjectInfo,
    StorageError,
    Store,
)
from providers.storage.keys import local_file
from providers.storage.streams import HashingReader, source_reader

TMP_RE = re.compile(r"^\.dqlctl-(\d+)-[0-9a-f]{12}\.tmp$")


class LocalStore(Store):
    scheme = "file"
    hash_types = frozenset()
    computable_hashes = frozenset({MD5})

    def __init__(self, bucket: str = "/", **options: Any) -> None:
        super().__init__(bucket, **options)
        self.root = Path(bucket).resolve()
        self._root_s = str(self.root)

    def uri(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def path(self, key: str) -> Path:
        """The file of ``key``; UnsafeKey (exit 2, nothing touched) for a key that would leave
        the root or cannot be a file name here (``providers.storage.keys``)."""
        return Path(self._file(key)) if key else self.root

    def _file(self, key: str) -> str:
        """:meth:`path` as a string, for the calls a sync makes once per file."""
        return local_file(self._root_s, key)

    # -- listing ----------------------------------------------------------------------------
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._count("list_page")
        if prefix == "" or prefix.endswith("/"):
            top, name_prefix = self.path(prefix.rstrip("/")), ""
        else:
            top, name_prefix = self.path(prefix).parent, self.path(prefix).name
        found: list[ObjectInfo] = []
        rel = os.path.relpath(top, self.root)
        self._walk(str(top), "" if rel == "." else rel.replace(os.sep, "/") + "/", name_prefix,
                   found, first=True)
        found.sort(key=lambda o: o.key)
        yield from found

    def _walk(self, folder: str, rel: str, name_prefix: str, out: list[ObjectInfo],
              first: bool) -> None:
        """Files under ``folder``, whose key is ``rel`` (built name by name: a relpath per file
        was most of a 500-file listing's time)."""
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        except NotADirectoryError:
            return
        except OSError as exc:
            raise StorageError(f"cannot read folder {folder}: {exc.strerror or exc}",
                               code=EXIT_BAD_INPUT) from None
        for entry in entries:
            if first and name_prefix and not entry.name.startswith(name_prefix):
                continue
            match = TMP_RE.match(entry.name)
            if match:
                if not pid_exists(int(match.group(1))):   # left by a killed put
                    try:
                        os.unlink(entry.path)
                    except OSError:
                        pass
                continue
            try:
                if entry.is_dir():
                    self._walk(entry.path, f"{rel}{entry.name}/", "", out, first=False)
                elif entry.is_file():
                    st = entry.stat()
                    out.append(ObjectInfo(rel + entry.name, st.st_size, st.st_mtime))
            except OSError as exc:
                raise StorageError(f"cannot read {entry.path}: {exc.strerror or exc}",
                                   code=EXIT_BAD_INPUT) from None

    def readable(self, key: str) -> bool:
        return os.access(self._file(key), os.R_OK)

    def stat(self, key: str) -> ObjectInfo:
        self._count("stat")
        path = self.path(key)
        try:
            st = path.stat()
        except OSError as exc:
            raise StorageError(f"{path}: {exc.strerror or exc}", code=EXIT_BAD_INPUT) from None
        if not path.is_file():
            raise StorageError(f"{path} is not a file", code=EXIT_BAD_INPUT)
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def compute_hash(self, key: str, kind: str) -> str:
        """md5 by reading the file (counted as ``hash``, not ``read``: no transfer)."""
        if kind != MD5:
            return super().compute_hash(key, kind)
        self._count("hash")
        try:
            with open(self._file(key), "rb") as reader:
                return hashlib.file_digest(reader, "md5").hexdigest()
        except OSError as exc:
            raise StorageError(f"cannot read {self.path(key)}: {exc.strerror or exc}",
                               code=EXIT_BAD_INPUT) from None

    # -- reading ----------------------------------------------------------------------------
    def open_read(self, key: str) -> BinaryIO:
        self._count("read")
        try:
            return open(self._file(key), "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise StorageError(f"cannot read {self.path(key)}: {exc.strerror or exc}",
                               code=EXIT_BAD_INPUT) from None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with self.open_read(key) as reader:
            reader.seek(start)
            return reader.read(length)

    # -- writing ----------------------------------------------------------------------------
    def put(self, key: str, source: BinaryIO | IO[bytes] | str | Path, *,
            size: int | None = None, mtime: float | None = None,
            md5: str | None = None) -> ObjectInfo:
        if not key or key.endswith("/"):
            raise StorageError(f"not a file name: {key!r}", code=EXIT_BAD_INPUT)
        self._count("put")
        dest = self.path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create folder {dest.parent}: {exc.strerror or exc}",
                               code=EXIT_BAD_INPUT) from None
        tmp = dest.parent / f".dqlctl-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
        with source_reader(source) as reader:
            try:
                hashing = HashingReader(reader)
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(hashing, out, 1024 * 1024)
                digest = hashing.hexdigest()
                if size is not None and hashing.size != size:
                    raise StorageError(f"{key}: read {hashing.size} bytes, expected {size} "
                                       "(the source changed while copying?)", transient=True)
                if md5 is not None and digest != md5:
                    raise StorageError(f"{key}: md5 {digest} of the bytes read differs from the "
                                       f"source's {md5}", transient=True)
                if mtime is not None:
                    os.utime(tmp, (mtime, mtime))
                os.replace(tmp, dest)
            except BaseException as exc:
                try:
                    tmp.unlink()
                except OSError:
                    pass
                if isinstance(exc, OSError):
                    raise StorageError(f"cannot write {dest}: {exc.strerror or exc}",
                                       code=EXIT_BAD_INPUT) from None
                raise
        st = dest.stat()
        return ObjectInfo(key, st.st_size, st.st_mtime, {MD5: digest})

    def delete(self, key: str) -> None:
        self._count("delete")
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {self.path(key)}: {exc.strerror or exc}",
                               code=EXIT_BAD_INPUT) from None
