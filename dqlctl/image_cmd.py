"""``dqlctl image build|push``: the engine's container image.

``build`` uses whichever container engine answers (docker, then podman) on the Dockerfile at the
project root. ``push --provider aws`` creates the ECR repository if missing, logs in with a token
from ``get_authorization_token`` (passed on stdin, never on a command line) and pushes.
Standard library only at import time.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

from dqlctl.errors import DqlctlError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TAG = "dqlctl-engine:latest"


def register(sub: Any) -> None:
    p = sub.add_parser("image", help="build or push the engine's container image")
    isub = p.add_subparsers(dest="image_verb", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="build the image with docker or podman")
    b.add_argument("--tag", default=DEFAULT_TAG)
    b.add_argument("--cpu", action="store_true", help="CPU-only torch (smaller)")
    b.add_argument("--engine", choices=("docker", "podman"), help="default: the first that works")
    b.set_defaults(func=cmd_image)
    u = isub.add_parser("push", help="push the image to the provider's registry (ECR on aws)")
    u.add_argument("--provider", default="aws")
    u.add_argument("--tag", default=DEFAULT_TAG)
    u.add_argument("--engine", choices=("docker", "podman"))
    u.add_argument("--region")
    u.set_defaults(func=cmd_image)


def container_engine(requested: str | None) -> str:
    from providers.containers import CONTAINER_ENGINES, container_engine_available

    for name in [requested] if requested else list(CONTAINER_ENGINES):
        if name and container_engine_available(name):
            return name
    found = [e for e in CONTAINER_ENGINES if shutil.which(e)]
    hint = (f"{', '.join(found)} found but not answering (is its daemon running?)" if found
            else "neither docker nor podman is installed")
    raise DqlctlError(f"no container engine: {hint}", 3)


def cmd_image(ctx: Any, args: argparse.Namespace) -> int:
    engine = container_engine(args.engine)
    if args.image_verb == "build":
        cmd = [engine, "build", "-t", args.tag, "-f", str(ROOT / "Dockerfile")]
        if args.cpu:
            cmd += ["--build-arg", "VARIANT=cpu"]
        proc = subprocess.run([*cmd, str(ROOT)])
        if proc.returncode != 0:
            raise DqlctlError(f"{engine} build failed (exit {proc.returncode})", 1)
        print(f"built {args.tag} with {engine}", file=ctx.stdout)
        return 0
    if args.provider != "aws":
        raise DqlctlError(f"image push to {args.provider!r} is not available yet (aws only)")
    from providers.aws.compute import AwsProvider

    ecr = AwsProvider(home=str(ctx.home))._client("ecr", args.region)
    repo_name = args.tag.split(":", 1)[0]
    try:
        repo = ecr.describe_repositories(repositoryNames=[repo_name])["repositories"][0]
    except ecr.exceptions.RepositoryNotFoundException:
        repo = ecr.create_repository(repositoryName=repo_name)["repository"]
    auth = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(auth["authorizationToken"]).decode().partition(":")
    registry = auth["proxyEndpoint"].removeprefix("https://")
    login = subprocess.run([engine, "login", "--username", user, "--password-stdin", registry],
                           input=password.encode(), capture_output=True)
    if login.returncode != 0:
        raise DqlctlError(f"{engine} login to {registry} failed: "
                          f"{login.stderr.decode().strip()[:200]}", 3)
    remote = f"{repo['repositoryUri']}:{args.tag.partition(':')[2] or 'latest'}"
    for step in ([engine, "tag", args.tag, remote], [engine, "push", remote]):
        if subprocess.run(step).returncode != 0:
            raise DqlctlError(f"`{' '.join(step[:2])}` failed", 1)
    print(f"pushed {remote}", file=ctx.stdout)
    return 0
