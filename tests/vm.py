"""A VM stand-in: an OpenSSH server that trusts the keys a (fake) cloud registered for its VMs,
as cloud-init does on a real instance (``AuthorizedKeysCommand`` asks the cloud for them)."""

from __future__ import annotations

import subprocess
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


@contextmanager
def vm_sshd(disk: Path, keys_url: str | None = None,
            keys_command: str | None = None) -> Iterator[dict[str, Any]]:
    """An OpenSSH server standing in for a VM: it trusts exactly the public keys that
    ``keys_url`` lists (one per line), or that the shell command ``keys_command`` prints.

    ``disk`` is the VM's own folder (remote_root). Needs root (sshd, /run).
    """
    keys_dir = Path("/run") / f"dqlctl-test-{uuid.uuid4().hex[:8]}"  # root-owned path
    keys_dir.mkdir(mode=0o755)
    script = keys_dir / "authorized_keys.sh"
    script.write_text("#!/bin/sh\n" + (keys_command or f"exec curl -sf --max-time 5 '{keys_url}'")
                      + "\n")
    script.chmod(0o755)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(keys_dir / "host_ed25519")], check=True)
    port = free_port()
    config = keys_dir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys_dir}/host_ed25519\n"
        "PidFile none\nAuthorizedKeysFile none\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "Subsystem sftp internal-sftp\n"
        f"AuthorizedKeysCommand {script}\nAuthorizedKeysCommandUser root\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    info: dict[str, Any] = {"port": port, "root": disk}

    def start() -> None:
        """(Again:) a machine answering at the address, e.g. the one a relaunch brings up."""
        procs.append(subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        info["pid"] = procs[-1].pid
        wait_tcp("127.0.0.1", port)

    disk.mkdir(parents=True, exist_ok=True)
    try:
        start()
        host_key = (keys_dir / "host_ed25519.pub").read_text().split()
        info.update(host_key=f"{host_key[0]} {host_key[1]}", restart=start)
        yield info
    finally:
        for sshd in procs:
            sshd.terminate()
            sshd.wait(timeout=10)
        for child in keys_dir.iterdir():
            child.unlink()
        keys_dir.rmdir()
