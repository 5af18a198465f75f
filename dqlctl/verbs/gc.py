"""``dqlctl gc``: remove what dqlctl created that no live run owns: instances, and what a launch
killed part-way leaves behind (security groups, key pairs, roles and instance profiles, GCE
firewalls and service accounts, Azure resource groups), in every region dqlctl may use.

Only this registry's resources are removed (their owner tag is this registry's id); another
registry's (a colleague's, in a shared account) are listed and left alone unless
``--all-owners``. ``down --orphans`` does the same.
"""

from __future__ import annotations

import argparse
from typing import Any

from dqlctl.errors import UsageError
from dqlctl.render import orphan_table
from dqlctl.verbs import print_json


def register(sub: Any) -> None:
    p = sub.add_parser("gc", help="remove leaked cloud resources no live run owns")
    add_orphan_flags(p)
    p.set_defaults(func=cmd_gc)


def add_orphan_flags(p: argparse.ArgumentParser) -> None:
    """The flags ``gc`` and ``down --orphans`` share (``--provider`` is added by ``down``)."""
    if not any("--provider" in a.option_strings for a in p._actions):
        p.add_argument("--provider", action="append", help="only these providers")
    p.add_argument("--all-owners", action="store_true",
                   help="also remove resources another registry (another dqlctl home, a "
                   "colleague) created")
    if not any("--yes" in a.option_strings for a in p._actions):
        p.add_argument("-y", "--yes", action="store_true", help="do not ask")
        p.add_argument("--json", action="store_true",
                       help="print the removed resources as JSON")


def cmd_gc(ctx: Any, args: argparse.Namespace) -> int:
    return remove_orphans(ctx, args)


def remove_orphans(ctx: Any, args: argparse.Namespace) -> int:
    """List the orphans, then remove this registry's (all with ``--all-owners``) on ``--yes``."""
    from dqlctl import runs

    warn = (lambda m: print(f"warning: {m}", file=ctx.stderr))  # noqa: E731
    found = runs.orphans(ctx, args.provider, warn=warn)
    mine = [r for r in found if args.all_owners or runs.owned(ctx, r)]
    others = len(found) - len(mine)
    if not mine:
        if args.json:
            print_json(ctx, [])
        else:
            print("no orphaned resources" + (
                f" of this registry ({others} of other registries: --all-owners)"
                if others else ""), file=ctx.stdout)
        return 0
    if not args.yes:
        print(orphan_table(mine, ctx.registry_id), file=ctx.stderr)
        raise UsageError(f"{len(mine)} orphaned resource(s); add --yes to remove them")
    done, left = runs.down_orphans(ctx, found, all_owners=args.all_owners)
    if args.json:
        print_json(ctx, [r.to_dict() for r in done])
    else:
        for res in done:
            print(f"removed {res.provider} {res.kind} {res.resource_id}", file=ctx.stdout)
    if left:
        print(f"left alone {len(left)} resource(s) of other registries (--all-owners removes "
              "them; `dqlctl ps --orphans` lists them)", file=ctx.stderr)
    return 0
