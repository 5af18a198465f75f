"""Sweeps: many runs as one object (markets x seeds x agent types x engine settings), run on a
backend, compared together.

- ``spec``      SweepSpec from a TOML file and/or flags, validated, expanded into members
- ``backends``  the backend seam (``SweepBackend``) and the registry of backends by provider
- ``queue``     the ``local`` backend: members as ordinary runs, at most ``concurrency`` at
                once, queued in the registry; ``pump`` starts the next ones
- ``pool``      the VM-pool backend (``aws``, ``gcp``, ``azure``): at most ``concurrency`` VMs,
                each taking members one after another, terminated when none is left for it
- ``control``   prepare, plan (``--dry-run``), launch, look (reconcile + pump), follow, down,
                summary
- ``compare``   the comparison of finished members through ``engine.aggregate``

The sweep rows and the member queue live in the registry (``dqlctl.registry_sweeps``); every
started member is an ordinary run (``runs.sweep_id``), so ``ps``, ``logs``, ``show`` and ``down``
work on it.
"""

from __future__ import annotations

from dqlctl.sweeps.control import (
    down,
    follow,
    launch,
    look,
    look_all,
    plan,
    prepare,
    summary,
    sweep_dir,
)
from dqlctl.sweeps.spec import SweepSpec, load_spec, merge, parse_grid_flag

__all__ = ["SweepSpec", "down", "follow", "launch", "load_spec", "look", "look_all", "merge",
           "parse_grid_flag", "plan", "prepare", "summary", "sweep_dir"]
