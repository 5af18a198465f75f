"""The command-line face of ``providers.sync`` (``dqlctl sync`` and
``python -m providers.sync_cli``): its flags, progress line and summary. Standard library only at
import, so ``dqlctl --help`` stays fast; the sync machinery loads when a sync runs.

One direction: this face imports the core (``providers.sync``), never the reverse."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sync flags, shared by ``dqlctl sync`` and ``python -m providers.sync_cli``."""
    parser.add_argument("src", metavar="SRC", help="a path or s3://, gs://, az:// URI")
    parser.add_argument("dst", metavar="DST")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--delete", action="store_true",
                        help="remove files at DST that SRC lacks (only after every copy worked)")
    parser.add_argument("--checksum", action="store_true",
                        help="compare by a hash both sides have, not size and time")
    parser.add_argument("--update", action="store_true",
                        help="skip files newer at DST; copy only when SRC is newer")
    parser.add_argument("--transfers", type=int, default=4, help="parallel copies (default 4)")
    parser.add_argument("--checkers", type=int, default=8,
                        help="parallel comparisons that need a request (default 8)")
    parser.add_argument("--max-delete", type=int, default=None, metavar="N",
                        help="refuse a plan that deletes more than N files at DST")
    parser.add_argument("--allow-empty-source", action="store_true",
                        help="sync from a SRC that lists nothing (else an error: a typo in SRC "
                        "with --delete would empty DST)")
    parser.add_argument("--include", action="append", default=[], metavar="GLOB")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run_from_args(args: argparse.Namespace, stdout: Any, stderr: Any, prog: str) -> int:
    """Run a sync for parsed arguments: progress on a terminal, a summary, the exit code."""
    for flag, value, least in (("--transfers", args.transfers, 1),
                               ("--checkers", args.checkers, 1),
                               ("--max-delete", args.max_delete, 0)):
        if value is not None and value < least:
            print(f"{prog}: error: {flag} must be at least {least}, got {value}", file=stderr)
            return 2
    from providers.storage import StorageError
    from providers.sync import Progress, human_size, sync

    show = stderr.isatty() and not args.json

    def on_progress(p: Progress) -> None:
        eta = f"{p.eta:.0f}s" if p.eta is not None else "?"
        stderr.write(f"\r{p.files_done}/{p.files_total} files  {human_size(p.bytes_done)}/"
                     f"{human_size(p.bytes_total)}  {human_size(p.rate)}/s  ETA {eta}   ")

    try:
        result = sync(args.src, args.dst, dry_run=args.dry_run, delete=args.delete,
                      checksum=args.checksum, update=args.update, transfers=args.transfers,
                      checkers=args.checkers, include=args.include, exclude=args.exclude,
                      allow_empty_source=args.allow_empty_source, max_delete=args.max_delete,
                      progress=on_progress if show else None)
    except StorageError as exc:
        print(f"{prog}: error: {exc}", file=stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; nothing partial was left at DST", file=stderr)
        return 130
    if show:
        stderr.write("\n")
    if args.json:
        print(result.to_json(), file=stdout)
    else:
        if result.dry_run:
            for f in result.files:
                if f.action != "skip":
                    print(f"  would {f.action} {f.key}  ({f.reason})", file=stdout)
            for u in result.stale_uploads:
                print(f"  would abort the unfinished upload of {u['key']} (a killed sync's, "
                      f"id {u['upload_id'][:16]})", file=stdout)
            if result.refused:
                print(f"{prog}: error: {result.refused}", file=stderr)
        elif result.stale_uploads:
            print(f"aborted {len(result.stale_uploads)} unfinished upload(s) a killed sync "
                  "left at DST", file=stdout)
        verb = "would copy" if result.dry_run else "copied"
        print(f"{verb} {result.copied}, skipped {result.skipped}, "
              f"{'would delete' if result.dry_run else 'deleted'} {result.deleted}, "
              f"{human_size(result.bytes_copied)} in {result.seconds:.2f}s "
              f"(compare: {', '.join(f'{k} {v}' for k, v in result.compare.items()) or '-'})",
              file=stdout)
        pulled = sum(f.via == "server" for f in result.files)
        if pulled:
            print(f"{pulled} copied server-side (the destination pulled them from signed URLs)",
                  file=stdout)
        if result.server_side_refused:
            print(f"streamed: the destination cannot pull from URLs "
                  f"({result.server_side_refused})", file=stdout)
        for error in result.errors:
            print(f"{prog}: error: {error}", file=stderr)
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m providers.sync_cli SRC DST [...]``: the core without the dqlctl CLI around it."""
    parser = argparse.ArgumentParser(prog="python -m providers.sync_cli",
                                     description="Sync SRC to DST (paths or s3://, gs://, az://)")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv), sys.stdout, sys.stderr, "sync")


if __name__ == "__main__":
    from providers.oneshot import run_once

    sys.exit(run_once(main))
