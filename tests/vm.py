"""A VM stand-in: an OpenSSH server that trusts the keys a (fake) cloud registered for its VMs,
as cloud-init does on a real instance (``AuthorizedKeysCommand`` asks the cloud for them).

Its sessions find a few fakes first on their PATH (sshd ``SetEnv``), so that nothing a VM may do
to itself touches the test machine: ``sudo`` runs its arguments as they are (the tests are root),
``shutdown`` records that it was called (one JSON line in ``<disk>/shutdown.log``: arguments and
the caller's folder) and then runs ``<disk>/shutdown-hook`` when a test wrote one (the AWS e2e
terminates the moto instance from it); ``docker`` records its argv and environment in
``<disk>/docker.log`` and exits 0 (to ``image inspect`` it answers a digest, ``FAKE_DIGEST``).
When the stand-in ends, so does every process started under
its disk (the supervisors a run left behind), as they would with the machine.

``controller_killed_mid_run`` starts a run from a dqlctl process and kills that process once
the VM has trained an episode: what the VM then does is up to it alone;
``deleted_itself_record`` checks what the supervisor says it did at the end (GCE, Azure).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.servers import free_port, wait_tcp

# The AWS VM stand-in trusts the key pairs EC2 knows: DescribeKeyPairs through EC2's query API
# (moto does not check the signature; curl answers in milliseconds, boto3 in a second and a half)
AWS_KEYS = ("exec curl -sf --max-time 5 -H 'Authorization: AWS4-HMAC-SHA256 Credential=testing/"
            "20250101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0' "
            "'{endpoint}/?Action=DescribeKeyPairs&IncludePublicKey=true&Version=2016-11-15' "
            "| grep -o '<publicKey>[^<]*' | sed 's/<publicKey>//'")
# the same, signed (SigV4, botocore's signer) with a key pair: for a moto server enforcing IAM
AWS_KEYS_SIGNED = f"""exec {sys.executable} -c '
import re, urllib.request
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
body = "Action=DescribeKeyPairs&IncludePublicKey=true&Version=2016-11-15"
req = AWSRequest("POST", "{{endpoint}}/", data=body,
                 headers={{{{"Content-Type": "application/x-www-form-urlencoded"}}}})
SigV4Auth(Credentials("{{key}}", "{{secret}}"), "ec2", "us-east-1").add_auth(req)
with urllib.request.urlopen(urllib.request.Request(req.url, body.encode(), dict(req.headers)),
                            timeout=5) as resp:
    print("\\n".join(re.findall("<publicKey>([^<]*)", resp.read().decode())))
'"""


@contextmanager
def vm_sshd(disk: Path, keys_url: str | None = None, keys_command: str | None = None,
            address: str = "127.0.0.1", port: int | None = None,
            tools: dict[str, str] | None = None,
            env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """An OpenSSH server standing in for a VM: it trusts exactly the public keys that
    ``keys_url`` lists (one per line), or that the shell command ``keys_command`` prints.

    ``disk`` is the VM's own folder (remote_root). It listens on ``address`` (any 127.x.y.z is
    this machine), at ``port`` (default: a free one; 22 where dqlctl is to find it by the
    address alone, as on a cloud). Needs root (sshd, /run, port 22). ``tools``: commands on
    its PATH that replace the fakes (name -> script; e.g. a real ``docker``); ``env``: more of
    its sessions' environment (sshd ``SetEnv``; values without spaces or quotes).
    """
    keys_dir = Path("/run") / f"dqlctl-test-{uuid.uuid4().hex[:8]}"  # root-owned path
    keys_dir.mkdir(mode=0o755)
    script = keys_dir / "authorized_keys.sh"
    script.write_text("#!/bin/sh\n" + (keys_command or f"exec curl -sf --max-time 5 '{keys_url}'")
                      + "\n")
    script.chmod(0o755)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(keys_dir / "host_ed25519")], check=True)
    disk.mkdir(parents=True, exist_ok=True)
    disk = disk.resolve()
    bin_dir = keys_dir / "bin"
    bin_dir.mkdir()
    for name, body in {**fakes(disk), **(tools or {})}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    port = port or free_port()
    config = keys_dir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress {address}\nHostKey {keys_dir}/host_ed25519\n"
        "PidFile none\nAuthorizedKeysFile none\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "Subsystem sftp internal-sftp\n"
        f"AuthorizedKeysCommand {script}\nAuthorizedKeysCommandUser root\n"
        f"SetEnv PATH={bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        + "".join(f" {k}={v}" for k, v in (env or {}).items()) + "\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    info: dict[str, Any] = {"address": address, "port": port, "root": disk}

    def start() -> None:
        """(Again:) a machine answering at the address, e.g. the one a relaunch brings up."""
        procs.append(subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        info["pid"] = procs[-1].pid
        wait_tcp(address, port)

    try:
        start()
        host_key = (keys_dir / "host_ed25519.pub").read_text().split()
        info.update(host_key=f"{host_key[0]} {host_key[1]}", restart=start)
        yield info
    finally:
        for sshd in procs:
            sshd.terminate()
            sshd.wait(timeout=10)
        kill_processes_under(disk)
        for child in bin_dir.iterdir():
            child.unlink()
        bin_dir.rmdir()
        for child in keys_dir.iterdir():
            child.unlink()
        keys_dir.rmdir()


def fakes(disk: Path) -> dict[str, str]:
    """The stand-in VM's fake commands (see the module's docstring): Python scripts, so that no
    shell between the caller and the record drops or reads anything."""
    def recorder(log: str, then: str = "") -> str:
        return (f"#!{sys.executable}\nimport json, os, sys\n"
                f"with open({str(disk / log)!r}, 'a') as fh:\n"
                "    fh.write(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(),\n"
                "                         'env': dict(os.environ)}) + '\\n')\n" + then)

    hook = str(disk / "shutdown-hook")
    return {
        "sudo": '#!/bin/sh\nexec "$@"\n',
        "shutdown": recorder("shutdown.log", f"if os.access({hook!r}, os.X_OK):\n"
                                             f"    os.execv({hook!r}, [{hook!r}])\n"),
        "docker": recorder("docker.log", DOCKER_ANSWERS),
    }


#: the fake ``docker``'s answer to ``image inspect`` (what providers/image_pull.py reads after a
#: pull): the image's repository pinned to ``FAKE_DIGEST``
FAKE_DIGEST = "sha256:" + "d1" * 32
DOCKER_ANSWERS = (
    f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
    "if sys.argv[1:3] == ['image', 'inspect']:\n"
    "    from providers.containers import pinned\n"
    f"    print(json.dumps([pinned(sys.argv[-1], {FAKE_DIGEST!r})]))\n")


def kill_processes_under(disk: Path) -> None:
    """SIGKILL the sessions of every process whose command line names ``disk`` (what a run
    started on the stand-in VM), as the machine's end would."""
    found = subprocess.run(["pgrep", "-f", str(disk)], capture_output=True, text=True).stdout
    for pid in found.split():
        try:
            sid = os.getsid(int(pid))
        except ProcessLookupError:
            continue
        if sid != os.getsid(0):  # never the test's own session
            subprocess.run(["pkill", "-KILL", "-s", str(sid)], check=False)


def controller_killed_mid_run(home: Path, launch: list[str], experiment: str) -> Any:
    """Launch ``launch`` (dqlctl's arguments, with ``--follow``) from a dqlctl process of its
    own, wait until the run is RUNNING and its VM has written an episode of ``experiment``,
    then kill that process (its SSH connection dies with it). The run's registry row."""
    from dqlctl import registry as reg
    from dqlctl.context import Context

    root = Path(__file__).resolve().parents[1]
    controller = subprocess.Popen([sys.executable, "-m", "dqlctl", *launch], cwd=root,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            rows = Context(home=home).registry.list()
            if rows and rows[0].state == reg.RUNNING:
                break
            assert controller.poll() is None, "the controller ended before the run started"
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.1)
        (run,) = rows
        events = Path(run.instance["extra"]["workdir"]) / "results" / experiment / \
            "events.jsonl"
        while '"episode"' not in (events.read_text() if events.exists() else ""):
            assert time.monotonic() < deadline, "no episode on the VM"
            time.sleep(0.05)
        return run
    finally:
        controller.kill()
        controller.wait(timeout=30)


def deleted_itself_record(workdir: Path, disk: Path, timeout: float = 120.0) -> dict[str, Any]:
    """The run in ``workdir`` ended well, its supervisor recorded that the cloud accepted the
    VM's delete (``selfcare.json``), and no shutdown was needed (none called from ``workdir``
    on the stand-in whose disk is ``disk``); the record."""
    assert json.loads((workdir / "exit.json").read_text())["exit_code"] == 0
    deadline = time.monotonic() + timeout
    while not (workdir / "selfcare.json").exists():
        assert time.monotonic() < deadline, "the supervisor did not record its self-delete"
        time.sleep(0.05)
    care: dict[str, Any] = json.loads((workdir / "selfcare.json").read_text())
    assert care["reason"].startswith("run ended") and care["self_delete"]["returncode"] == 0
    shutdowns = disk / "shutdown.log"
    assert not shutdowns.exists() or str(workdir) not in shutdowns.read_text()
    return care
