"""``dqlctl sync SRC DST``: one command between local disk, S3, GCS and Azure Blob (rclone-style).

The work is ``providers.sync``; this module only adds the verb. Standard library only at import
(``providers.sync`` loads each cloud's SDK when a URI of that cloud is used).
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from providers.sync_cli import add_arguments

    p = sub.add_parser("sync", help="copy a tree between local disk, s3://, gs:// and az://",
                       description="Make DST hold what SRC holds (files that differ are copied; "
                       "with --delete, extras are removed). Equal means the same size and a "
                       "hash both listings carry, else the source's mtime stored with the "
                       "copy (either way a difference is copied); the summary says which. A "
                       "SRC that lists nothing is an error (--allow-empty-source); keys that "
                       "would leave a local DST are refused.")
    add_arguments(p)
    p.set_defaults(func=cmd_sync)


def cmd_sync(ctx: Any, args: argparse.Namespace) -> int:
    from providers.sync_cli import run_from_args

    return run_from_args(args, ctx.stdout, ctx.stderr, "dqlctl")
