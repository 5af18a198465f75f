"""The small process that owns a local run: starts the engine, forwards signals, records the end.

``python -m providers.local.supervisor --workdir DIR --tag dqlctl:run=ID -- ARGV...``

It is started by the local provider in a new session (detached from the terminal), so a run
survives dqlctl exiting. It writes ``DIR/job.json`` when the engine has started (the engine's pid)
and ``DIR/exit.json`` when it has ended (exit code, signal), each atomically (temp + rename), so a
dqlctl started later can tell a finished run from a vanished one. SIGTERM/SIGINT/SIGHUP are passed
on to the engine, which checkpoints and exits cleanly. The ``--tag`` stays on the command line so
that ``list_instances`` finds orphaned runs by scanning the process table. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def write_json_atomic(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dqlctl-local-supervisor")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--tag", action="append", default=[])
    parser.add_argument("--env-file", help="KEY=VALUE lines added to the engine's environment "
                        "(secrets: kept off every command line)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    workdir = Path(args.workdir)
    received: list[int] = []

    env = dict(os.environ)
    if args.env_file:
        with open(args.env_file, encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep and key:
                    env[key] = value
    try:
        child = subprocess.Popen(command, cwd=workdir, stdin=subprocess.DEVNULL, env=env)
    except OSError as exc:
        print(f"dqlctl: could not start the engine: {exc}", flush=True)
        write_json_atomic(workdir / "exit.json", {"exit_code": 127, "signal": None,
                                                  "reason": f"could not start: {exc}",
                                                  "ended_at": time.time()})
        return 127

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)

    write_json_atomic(workdir / "job.json", {"pid": child.pid, "supervisor_pid": os.getpid(),
                                             "started_at": time.time(), "argv": command})
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
    sig_name = signal.Signals(-code).name if code < 0 else None
    write_json_atomic(workdir / "exit.json", {
        "exit_code": code if code >= 0 else 128 - code,
        "signal": sig_name,
        "requested_stop": bool(received),
        "ended_at": time.time(),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
