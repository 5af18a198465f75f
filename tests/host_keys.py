"""What the clouds' stand-ins publish as a VM's SSH host keys: moto's GetConsoleOutput is a
fixed text without cloud-init's blocks, so ``seed_ec2_console`` adds the block a real instance
prints (with the VM stand-in's real host key) to what moto answers. The fake GCE and ARM servers
publish ``vm_host_keys`` themselves (guest attributes, the boot-diagnostics serial log)."""

from __future__ import annotations

from typing import Any

from providers.ssh import fingerprint


def console_block(host_keys: list[str], prefix: str = "ec2: ") -> str:
    """cloud-init's fingerprint block for ``host_keys`` (key lines), as on an EC2 console."""
    lines = [f"{prefix}#############################################################",
             f"{prefix}-----BEGIN SSH HOST KEY FINGERPRINTS-----"]
    lines += [f"{prefix}256 {fingerprint(k)} root@ip-172-31-0-7 "
              f"({k.split()[0].split('-')[-1].upper()})" for k in host_keys]
    lines += [f"{prefix}-----END SSH HOST KEY FINGERPRINTS-----",
              f"{prefix}#############################################################"]
    return "\n".join(lines) + "\n"


def seed_ec2_console(monkeypatch: Any, host_keys: list[str]) -> None:
    """Every AwsProvider reads moto's console output with ``host_keys``' block appended."""
    from providers.aws.compute import AwsProvider

    real = AwsProvider._console_output

    def seeded(self: AwsProvider, instance: Any) -> str:
        return real(self, instance) + "\n" + console_block(host_keys)

    monkeypatch.setattr(AwsProvider, "_console_output", seeded)
