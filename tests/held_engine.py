"""The engine with a gate a test controls: ``python tests/held_engine.py EPISODE RELEASE ARGS...``
runs ``python -m engine ARGS...``, except that training holds in the middle of episode
``EPISODE + 1`` (after ``EPISODE`` episodes and their checkpoint, before the next one ends) until
a stop signal has been received (SIGTERM/SIGINT: ``stop.signum`` set) or the file ``RELEASE``
exists (``-``: none; else ``RELEASE.held`` is created when the hold begins). The run cannot
finish before the test has acted, however fast it is or however slowly the test is scheduled:
no race against the clock. Nothing else changes (same steps, same random numbers), so a held run
ends exactly as an unheld one.

Standalone (only the engine is imported, from ``sys.path`` as ``python -m engine`` finds it), so
a VM stand-in can run it as its ``python`` (see :func:`write_python`).
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

HOLD_LIMIT_S = 600.0        # a test that never acts: go on rather than hang forever


def hold(episode: int, release: str) -> None:
    """Patch the trainer so that it holds mid-way through episode ``episode + 1``."""
    from engine.train import Trainer

    step = Trainer._step

    def held_step(self: Trainer) -> None:
        s = self.s
        if s.episode == episode and s.step_in_episode == self.steps_per_episode // 2:
            if release != "-":
                Path(f"{release}.held").touch()     # the test can tell the gate was there
            until = time.monotonic() + HOLD_LIMIT_S
            while (self.stop is None or self.stop.signum is None) \
                    and not (release != "-" and os.path.exists(release)) \
                    and time.monotonic() < until:
                time.sleep(0.01)    # signals interrupt it; their handlers run here
        step(self)

    Trainer._step = held_step  # type: ignore[method-assign]


def write_python(path: Path, episode: int, release: Path) -> Path:
    """An executable that stands for a VM's ``python``: ``-u -m engine ARGS`` runs the held
    engine, anything else (the supervisor) the real interpreter."""
    path.write_text(
        f"#!/bin/sh\nif [ \"$1 $2 $3\" = \"-u -m engine\" ]; then shift 3; exec {sys.executable} "
        f"-u {Path(__file__).resolve()} {episode} {release} \"$@\"; fi\n"
        f"exec {sys.executable} \"$@\"\n")
    path.chmod(0o755)
    return path


def hold_in(home: Path, episode: int, name: str = "") -> Path:
    """The engine of every run ``home``'s config starts on a VM stand-in held mid-episode
    ``episode + 1`` (its ``remote_python = "<this interpreter>"`` becomes :func:`write_python`'s);
    the file whose creation releases it (``<file>.held`` appears when the hold begins)."""
    release = home / f"release{'-' if name else ''}{name}"
    held = write_python(home / f"held-python{'-' if name else ''}{name}", episode, release)
    config = home / "config.toml"
    text = config.read_text()
    plain = f'remote_python = "{sys.executable}"'
    assert plain in text, f"{config} names no {plain}"
    config.write_text(text.replace(plain, f'remote_python = "{held}"'))
    return release


def main() -> None:
    episode, release, *args = sys.argv[1:]
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path[0] = os.getcwd()       # as `python -m engine` would have it
    hold(int(episode), release)
    sys.argv = ["engine", *args]
    runpy.run_module("engine", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
