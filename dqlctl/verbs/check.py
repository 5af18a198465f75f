"""``dqlctl check [PROVIDER...]``: what each provider needs and whether it is there (credentials,
SDK, tools), with the fix for what is missing."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from dqlctl.errors import EXIT_PROVIDER, UsageError
from dqlctl.verbs import print_json


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="what each provider needs and whether it is there")
    p.add_argument("providers", nargs="*", metavar="PROVIDER")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)


def cmd_check(ctx: Any, args: argparse.Namespace) -> int:
    from providers import COMPUTE_PROVIDERS, PLANNED_PROVIDERS

    names = args.providers or sorted(COMPUTE_PROVIDERS)
    results = []
    for name in names:
        if name not in COMPUTE_PROVIDERS:
            if name in PLANNED_PROVIDERS:
                raise UsageError(f"provider {name!r} is not available in this build yet")
            raise UsageError(f"unknown provider {name!r} (choose from: "
                             f"{', '.join(sorted(COMPUTE_PROVIDERS))})")
        results.append(ctx.provider(name).check())
    if args.json:
        print_json(ctx, [asdict(r) for r in results])
    else:
        for res in results:
            print(f"{res.provider}: {'ready' if res.ok else 'NOT ready'}", file=ctx.stdout)
            for item in res.items:
                mark = "ok " if item.ok else "!! "
                print(f"  {mark}{item.name}: {item.detail}", file=ctx.stdout)
                if item.fix and not item.ok:
                    print(f"       fix: {item.fix}", file=ctx.stdout)
    # Like `sky check`: a survey of every provider is informational; naming providers asks
    # whether those are ready, and the exit code says so.
    if not args.providers:
        return 0
    return 0 if all(r.ok for r in results) else EXIT_PROVIDER
