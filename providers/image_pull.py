"""On the VM: log the container engine in to the cloud's registry with the VM's own identity,
pull the engine image, and print the reference pinned to the digest that was pulled.

``python -m providers.image_pull --engine docker [--login aws --region R] [--env-file F] IMAGE``

* ``--login aws``: the password comes from ECR's GetAuthorizationToken, signed with the instance
  role's credentials from IMDSv2 (providers/vm_identity.py); nothing was shipped to the VM. It
  goes to ``<engine> login --password-stdin`` on stdin, never on a command line, and the engine
  logs out again once the image is pulled (no registry token stays on the VM's disk). The
  registry logged in to is the image's own host.
* ``--env-file``: KEY=VALUE lines (the run's settings file) read for the identity's endpoints
  only; nothing of it reaches a command line or the container engine's environment.
* ``--login gcp``: user ``oauth2accesstoken``, the password the VM's service account's access
  token from the metadata server (Artifact Registry's own scheme).
* ``--login azure``: the managed identity's token from IMDS (for Azure Resource Manager),
  exchanged at the registry's ``/oauth2/exchange`` for an ACR refresh token, the password of
  user ``00000000-0000-0000-0000-000000000000`` (``DQLCTL_ACR_EXCHANGE_URL``: the exchange's
  base URL when not the registry's own).
* Without ``--login`` the image is pulled as it is (a public image, or one the engine can
  already read).

The last line on stdout is ``REGISTRY/REPO@sha256:...``: what the run records and what every
later ``docker run`` (and a recovery's relaunch) uses, so a tag moved after the launch never
changes what the run runs. Exit 0, or 1 with one line on stderr saying what failed.
Standard library only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping

from providers.containers import pinned, recorded_digest, split_reference
from providers.vm_identity import IdentityError, registry_password

PULL_TIMEOUT_S = 1800.0


class PullError(Exception):
    pass


def run(argv: list[str], *, stdin: bytes | None = None, timeout: float = 300.0) -> str:
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PullError(f"`{' '.join(argv[:2])}`: {exc}") from None
    if proc.returncode != 0:
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise PullError(f"`{' '.join(argv[:2])}` failed (exit {proc.returncode}): {last[0]}")
    return proc.stdout.decode(errors="replace")


def digest_of(engine: str, image: str) -> str:
    """The registry digest the engine recorded for ``image``'s repository when it pulled it."""
    found = recorded_digest(engine, image)
    if not found:
        raise PullError(f"{engine} recorded no digest for {image} after pulling it")
    return found


def pull(engine: str, image: str, login: str | None = None, region: str | None = None,
         env: Mapping[str, str] | None = None) -> str:
    """Log in (with ``login``'s identity), pull ``image``; the digest-pinned reference."""
    if image.startswith("-"):
        raise PullError(f"engine image {image!r} is not an image name")
    registry = split_reference(image)[0]
    if login:
        if not registry:
            raise PullError(f"image {image!r} names no registry to log in to")
        user, password = registry_password(login, registry, os.environ if env is None else env,
                                           region)
        run([engine, "login", "--username", user, "--password-stdin", registry],
            stdin=password.encode())
    try:
        run([engine, "pull", image], timeout=PULL_TIMEOUT_S)
    finally:     # the registry token is not left on the VM's disk once the image is here
        if login:
            subprocess.run([engine, "logout", registry], capture_output=True, timeout=60)
    return pinned(image, digest_of(engine, image))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m providers.image_pull")
    parser.add_argument("--engine", default="docker")
    parser.add_argument("--login", choices=("aws", "gcp", "azure"))
    parser.add_argument("--region")
    parser.add_argument("--env-file")
    parser.add_argument("image")
    args = parser.parse_args(argv)
    try:
        env = dict(os.environ)
        if args.env_file:
            from providers.layout import read_env_file

            env.update(read_env_file(args.env_file, remove=False))
        print(pull(args.engine, args.image, args.login, args.region, env), flush=True)
    except (PullError, IdentityError, OSError) as exc:
        print(f"image pull: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
