"""SSH to a VM with a pinned host key (paramiko, imported lazily).

The first host key a run sees is recorded with the run; every later connection refuses any other
key (paramiko ``RejectPolicy`` with the pinned key as the only known host). ``wait_for_ssh``
retries until the VM's sshd answers. File reads go over SFTP from a byte offset, so a follower
that loses its connection resumes exactly where it stopped: no line lost or doubled.

Files of any size are streamed both ways: uploads are copied from a file object in pipelined
writes, downloads are read a window of pipelined requests at a time (``SftpReader``), so a
multi-GB data file or results folder never sits in memory.
"""

from __future__ import annotations

import base64
import io
import shlex
import shutil
import socket
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from providers.base import ProviderError, SshTarget, install_hint


class HostKeyMismatch(ProviderError):
    pass


class SshUnavailable(ProviderError):
    pass


def _paramiko() -> Any:
    try:
        import paramiko
    except ImportError:  # pragma: no cover - depends on the extra
        raise ProviderError(f"SSH needs paramiko: {install_hint('aws')} "
                            "(or the gcp / azure extra)") from None
    return paramiko


def _key_line(key: Any) -> str:
    return f"{key.get_name()} {key.get_base64()}"


def fingerprint(key_line: str) -> str:
    """The ``SHA256:...`` fingerprint of an OpenSSH public key line (as ``ssh-keygen -l``)."""
    import hashlib

    blob = base64.b64decode(key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def host_keys_in_console(text: str) -> list[str]:
    """The host keys cloud-init prints to a VM's console (EC2 GetConsoleOutput, a serial
    port): the key lines of its ``SSH HOST KEY KEYS`` block and the ``SHA256:`` fingerprints of
    its ``SSH HOST KEY FINGERPRINTS`` block; lines may carry a prefix (``ec2: ``)."""
    import re

    found: list[str] = []
    block = None
    for line in text.splitlines():
        if "-----BEGIN SSH HOST KEY" in line:
            block = "keys" if "KEYS-----" in line else "fingerprints"
            continue
        if "-----END SSH HOST KEY" in line:
            block = None
            continue
        if block == "keys":
            m = re.search(r"((?:ssh|ecdsa|sk)-[\w@.-]+) (AAAA[A-Za-z0-9+/=]+)", line)
        elif block == "fingerprints":
            m = re.search(r"(SHA256:[A-Za-z0-9+/]{43})", line)
        else:
            continue
        if m:
            found.append(" ".join(m.groups()))
    return found


def matches_expected(key_line: str, expected: tuple[str, ...] | list[str]) -> bool:
    """Whether the key a server presented is one of ``expected`` (key lines or fingerprints)."""
    if not expected:
        return False
    kind_blob = " ".join(key_line.split()[:2])
    fp = fingerprint(key_line)
    return any(e == fp or " ".join(e.split()[:2]) == kind_blob for e in expected)


SFTP_REQUEST = 32768        # bytes per SFTP read/write request (paramiko's MAX_REQUEST_SIZE)
READ_WINDOW = 4 * 2**20     # bytes of read requests in flight, and at most buffered, per file
COPY_BLOCK = 2**20          # bytes per read when copying from a file object


class _Window:
    """The read requests for bytes ``start..end`` of an open ``SFTPFile``, sent at once, and
    their answers, which paramiko's client hands to ``_async_response`` by request number (the
    protocol lets a server answer out of order, and answer a read with fewer bytes than asked).
    paramiko has no public call for this; it uses the same two client methods as paramiko's own
    prefetch (``_async_request``, ``_read_response``)."""

    def __init__(self, handle: Any, start: int, end: int) -> None:
        from paramiko.sftp import CMD_READ, int64

        self._handle, self._sftp = handle, handle.sftp
        self._answers: dict[int, bytes] = {}
        self._eof: set[int] = set()
        self._error: Exception | None = None
        self._requests = [
            (self._sftp._async_request(self, CMD_READ, handle.handle, int64(offset),
                                       min(SFTP_REQUEST, end - offset)),
             offset, min(SFTP_REQUEST, end - offset))
            for offset in range(start, end, SFTP_REQUEST)]

    def _async_response(self, t: int, msg: Any, num: int) -> None:
        from paramiko.sftp import CMD_DATA, CMD_STATUS, SFTPError

        if t == CMD_DATA:
            self._answers[num] = msg.get_string()
            return
        self._answers[num] = b""
        try:            # a status: an error, or the end of the file
            if t != CMD_STATUS:
                raise SFTPError(f"unexpected SFTP answer {t} to a read")
            self._sftp._convert_status(msg)
        except EOFError:
            pass
        except Exception as exc:    # kept, and raised once every answer is in
            self._error = self._error or exc
        self._eof.add(num)

    def pieces(self) -> list[bytes]:
        """Every answer, in file order, once all have arrived (the first error raised, if
        any). A short answer is completed by asking again for the rest; the end of the file
        (it shrank) ends the window there, and the caller's size check says so."""
        while len(self._answers) < len(self._requests):
            self._sftp._read_response()
        if self._error is not None:
            raise self._error
        out: list[bytes] = []
        for num, offset, length in self._requests:
            if num in self._eof:
                break
            out.append(self._answers[num])
            got = len(self._answers[num])
            if got == 0:            # nothing, yet not the end: nothing more to hope for
                break
            if got < length:
                rest = _Window(self._handle, offset + got, offset + length).pieces()
                out.extend(rest)
                if sum(map(len, rest)) < length - got:
                    break
        return out


class SftpReader(io.RawIOBase):
    """A sequential reader of ``size`` bytes of an open remote file (paramiko ``SFTPFile``).

    Read requests are pipelined one window (``READ_WINDOW``) at a time, so a high-latency link
    is not paid once per 32 KiB, while no more than a window is held in memory however fast the
    network is against the consumer (paramiko's whole-file ``prefetch`` buffers without bound).
    The window's requests are sent here, in this thread, and their answers collected by request
    number (``_Window``), not by paramiko's ``readv``: its prefetch thread registers each request
    after sending it, so on a loaded machine an answer can arrive first, the prefetch is marked
    done early, and the rest of the file is read one synchronous 32 KiB request at a time while
    the prefetched answers pile up unread (measured: 17-25 MiB held for a 64 MiB file against a
    4 MiB window). Closing it closes the remote file.
    """

    def __init__(self, handle: Any, size: int, window: int = READ_WINDOW) -> None:
        super().__init__()
        self._handle = handle
        self._size = size
        self._window = window
        self._next = 0                            # where the next window starts
        self._pieces: deque[bytes] = deque()     # the window's answers not yet read
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Have unread bytes in ``_pending``; False at the end."""
        while not self._pending:
            piece = self._pieces.popleft() if self._pieces else None
            if piece is None:
                if self._next >= self._size:
                    return False
                end = min(self._next + self._window, self._size)
                self._pieces = deque(_Window(self._handle, self._next, end).pieces())
                self._next = end
                continue
            self._pending = memoryview(piece)
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if size == 0 or not self._fill():
            return b""
        out = self._pending[:size].tobytes()
        self._pending = self._pending[len(out):]
        return out

    def readinto(self, buffer: Any) -> int:
        if not self._fill():
            return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._pieces.clear()
            self._handle.close()
        super().close()


def _expected_policy(paramiko: Any, target: SshTarget) -> Any:
    """A paramiko host-key policy that accepts only a key the cloud published for the VM."""

    class Expected(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            line = _key_line(key)
            if not matches_expected(line, target.host_keys):
                raise HostKeyMismatch(
                    f"host key of {target.host}:{target.port} ({key.get_name()} "
                    f"{fingerprint(line)}) is not one the cloud published for the VM "
                    f"({', '.join(target.host_keys)}); refusing to connect")
            client.get_host_keys().add(hostname, key.get_name(), key)

    return Expected()


class SshSession:
    """One SSH connection to ``target``; ``host_key`` is the pinned key after ``connect``."""

    def __init__(self, target: SshTarget, connect_timeout: float = 10.0) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.host_key: str | None = target.host_key
        self._client: Any = None
        self._sftp: Any = None

    # -- connection ------------------------------------------------------------------------------

    def connect(self) -> SshSession:
        paramiko = _paramiko()
        client = paramiko.SSHClient()
        hostname = (self.target.host if self.target.port == 22
                    else f"[{self.target.host}]:{self.target.port}")
        if self.host_key:
            kind, _, blob = self.host_key.partition(" ")
            key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob.split()[0]))
            client.get_host_keys().add(hostname, kind, key)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        elif self.target.host_keys:  # the first connection: the key the cloud published
            client.set_missing_host_key_policy(_expected_policy(paramiko, self.target))
        else:  # the cloud published none: trust on first use (the caller has warned)
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        pkey = paramiko.Ed25519Key.from_private_key_file(self.target.key_path)
        try:
            client.connect(self.target.host, port=self.target.port,
                           username=self.target.username, pkey=pkey,
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, allow_agent=False,
                           look_for_keys=False)
        except HostKeyMismatch:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyMismatch(
                f"host key of {self.target.host}:{self.target.port} changed (expected the key "
                f"pinned at first contact, got {exc.key.get_name()}); refusing to connect") from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyMismatch(
                    f"host key of {self.target.host}:{self.target.port} does not match the "
                    "pinned key; refusing to connect") from None
            raise SshUnavailable(f"ssh {self.target.host}:{self.target.port}: {exc}") from None
        except (OSError, EOFError) as exc:
            client.close()
            raise SshUnavailable(f"ssh {self.target.host}:{self.target.port}: {exc}") from None
        transport = client.get_transport()
        transport.set_keepalive(15)
        self.host_key = _key_line(transport.get_remote_server_key())
        self._client = client
        return self

    @property
    def connected(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # noqa: BLE001 - closing a broken channel
                pass
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> SshSession:
        if self._client is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sftp(self) -> Any:
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
        return self._sftp

    # -- commands and files ----------------------------------------------------------------------

    def run(self, command: str, timeout: float | None = 120.0,
            stdin_data: bytes | None = None) -> tuple[int, str, str]:
        """Run ``command`` (a shell string) to completion: (exit code, stdout, stderr)."""
        stdin, stdout, stderr = self._client.exec_command(command, timeout=timeout)
        if stdin_data is not None:
            stdin.write(stdin_data)
            stdin.channel.shutdown_write()
        out = stdout.read().decode("utf-8", errors="replace")
        err = stderr.read().decode("utf-8", errors="replace")
        return stdout.channel.recv_exit_status(), out, err

    def check(self, command: str, what: str, timeout: float | None = 600.0) -> str:
        code, out, err = self.run(command, timeout=timeout)
        if code != 0:
            detail = (err.strip() or out.strip()).splitlines()[-1:] or [f"exit {code}"]
            raise ProviderError(f"{what} failed on {self.target.host}: {detail[0]}")
        return out

    def put_file(self, source: str | Path | IO[bytes], remote_path: str,
                 mode: int = 0o600) -> None:
        """Write a file atomically (temp + rename), created with ``mode`` before any byte lands,
        streamed from a local path or a binary file object (pipelined writes)."""
        sftp = self.sftp()
        tmp = f"{remote_path}.tmp"
        with sftp.open(tmp, "wb") as fh:
            fh.chmod(mode)
            fh.set_pipelined(True)
            if isinstance(source, str | Path):
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, fh, COPY_BLOCK)
            else:
                shutil.copyfileobj(source, fh, COPY_BLOCK)
        sftp.posix_rename(tmp, remote_path)

    def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o600) -> None:
        """``put_file`` of a small payload held in memory (settings, the code tarball)."""
        self.put_file(io.BytesIO(data), remote_path, mode)

    def read_from(self, remote_path: str, offset: int, limit: int = 4 * 2**20) -> bytes:
        """Bytes of a remote file from ``offset`` (b"" when it does not exist yet)."""
        sftp = self.sftp()
        try:
            with sftp.open(remote_path, "rb") as fh:
                fh.seek(offset)
                return fh.read(limit)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            if getattr(exc, "errno", None) == 2:
                return b""
            raise

    def exists(self, remote_path: str) -> bool:
        try:
            self.sftp().stat(remote_path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if getattr(exc, "errno", None) == 2:
                return False
            raise
        return True

    def list_tree(self, remote_dir: str) -> list[tuple[str, int]]:
        """(relative path, size) of every regular file under ``remote_dir``, recursively."""
        import stat as st

        sftp = self.sftp()
        out: list[tuple[str, int]] = []

        def walk(path: str, rel: str) -> None:
            for entry in sftp.listdir_attr(path):
                child, child_rel = f"{path}/{entry.filename}", f"{rel}{entry.filename}"
                if st.S_ISDIR(entry.st_mode):
                    walk(child, child_rel + "/")
                elif st.S_ISREG(entry.st_mode):
                    out.append((child_rel, entry.st_size or 0))

        walk(remote_dir, "")
        return out

    def open_reader(self, remote_path: str, size: int) -> SftpReader:
        """A streaming reader of the first ``size`` bytes of a remote file (close it)."""
        return SftpReader(self.sftp().open(remote_path, "rb"), size)


def wait_for_ssh(target: SshTarget, timeout: float = 600.0, interval: float = 2.0) -> SshSession:
    """Connect as soon as the VM's sshd answers (a fresh VM takes a minute); pins the key."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((target.host, target.port), timeout=5):
                pass
            return SshSession(target).connect()
        except HostKeyMismatch:
            raise
        except (OSError, ProviderError) as exc:
            last = exc
        time.sleep(interval)
    raise SshUnavailable(f"ssh {target.host}:{target.port} did not answer within {timeout:.0f} s"
                         f" ({last})")


def pinned(target: SshTarget, host_key: str | None) -> SshTarget:
    return replace(target, host_key=host_key)


def q(value: str) -> str:
    return shlex.quote(value)
