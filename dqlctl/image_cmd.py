"""``dqlctl image build|push``: the engine's container image.

``build`` uses whichever container engine answers (docker, then podman) on the Dockerfile at the
project root, in a build context of its own (providers/containers.py ``build_context``):
``--base IMAGE`` is the base (any Debian-like image with python3 >= 3.11 and venv), ``--wheels
DIR`` makes it install from that folder of wheels alone, with no package index (an offline build).
It prints the image's id, size and build time.

``push --provider NAME`` asks the provider to push (the ``ImageRegistry`` verb ``push_image``, for
providers with the ``IMAGE_REGISTRY`` capability: ECR on aws, Artifact Registry on gcp, ACR on
azure) and prints where the image went and
its digest; a provider without a registry is refused with the list of those that have one. The
push is remembered (dqlctl/pushed_images.py): a later ``launch --runtime docker`` on that
provider without ``--image`` runs it, pinned to its digest. ``--json`` prints the result as one
JSON object (the container engine's own output goes to stderr). Standard library only at import
time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
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
    b.add_argument("--base", metavar="IMAGE",
                   help="base image (default python:3.11-slim-bookworm): Debian-like, python3 "
                   ">= 3.11 with venv")
    b.add_argument("--wheels", metavar="DIR",
                   help="install from this folder of wheels only, no package index (offline)")
    b.add_argument("--engine", choices=("docker", "podman"), help="default: the first that works")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=cmd_image)
    u = isub.add_parser("push", help="push the image to the provider's registry (ECR, Artifact "
                         "Registry, ACR)")
    u.add_argument("--provider", default="aws")
    u.add_argument("--tag", default=DEFAULT_TAG)
    u.add_argument("--engine", choices=("docker", "podman"))
    u.add_argument("--region")
    u.add_argument("--json", action="store_true", help="print the result as JSON")
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


def registry_providers() -> list[str]:
    """The providers that can hold the engine image (capability ``IMAGE_REGISTRY``)."""
    from providers import capabilities_of, provider_names
    from providers.base import Capability

    return [n for n in provider_names() if Capability.IMAGE_REGISTRY in capabilities_of(n)]


def cmd_image(ctx: Any, args: argparse.Namespace) -> int:
    if args.image_verb == "push":
        return cmd_push(ctx, args)
    from providers.containers import build_context, image_facts

    wheels = Path(args.wheels) if args.wheels else None
    if wheels is not None and not any(wheels.glob("*.whl")):
        raise DqlctlError(f"--wheels {args.wheels}: no *.whl files there (fill it with "
                          "`pip download -d DIR ...` on a machine that reaches an index)")
    engine = container_engine(args.engine)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dqlctl-build-") as tmp:
        context = build_context(ROOT, Path(tmp), wheels)
        cmd = [engine, "build", "-t", args.tag, "-f", str(context / "Dockerfile")]
        if args.cpu:
            cmd += ["--build-arg", "VARIANT=cpu"]
        if args.base:
            cmd += ["--build-arg", f"BASE={args.base}"]
        # with --json the engine's own output goes to stderr, so stdout is the result alone
        proc = subprocess.run([*cmd, str(context)], stdout=2 if args.json else None)
    if proc.returncode != 0:
        raise DqlctlError(f"{engine} build failed (exit {proc.returncode})", 1)
    facts = {"tag": args.tag, "engine": engine, "cpu": bool(args.cpu), "base": args.base,
             "offline": wheels is not None, **image_facts(engine, args.tag),
             "seconds": round(time.monotonic() - started, 1)}
    if args.json:
        print(json.dumps(facts), file=ctx.stdout)
    else:
        size = facts.get("size_bytes")
        about = f": {size / 1e9:.2f} GB, {facts['id']}" if size else ""
        print(f"built {args.tag} with {engine}{about} ({facts['seconds']:.0f} s)",
              file=ctx.stdout)
    return 0


def cmd_push(ctx: Any, args: argparse.Namespace) -> int:
    from providers import capabilities_of, provider_names
    from providers.base import Capability, ProviderError

    if args.provider not in provider_names():
        raise DqlctlError(f"unknown provider {args.provider!r} (known: "
                          f"{', '.join(provider_names())})")
    if Capability.IMAGE_REGISTRY not in capabilities_of(args.provider):
        can = registry_providers()
        raise DqlctlError(f"image push to {args.provider!r} is not available: {args.provider} "
                          "has no image registry dqlctl can push to (providers that can: "
                          f"{', '.join(can) or 'none'})")
    engine = container_engine(args.engine)
    try:
        pushed = ctx.provider(args.provider).push_image(args.tag, engine, region=args.region)
    except ProviderError as exc:
        raise DqlctlError(str(exc), exc.exit_code) from None
    from dqlctl.pushed_images import remember_push

    remember_push(ctx.home, pushed.to_dict())
    if args.json:
        print(json.dumps(pushed.to_dict()), file=ctx.stdout)
    else:
        digest = f" ({pushed.digest})" if pushed.digest else ""
        print(f"pushed {pushed.reference}{digest}", file=ctx.stdout)
    return 0
