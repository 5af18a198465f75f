"""Where a sweep's members run: the backend seam, and the registry of backends by provider.

A backend takes a sweep whose members are queued in the registry and gets them run:

- ``default_concurrency(ctx)``: how many members run at once when the spec does not say;
- ``plan(ctx, sweep_spec, members)``: what ``sweep launch --dry-run`` shows (where each member
  goes, the cost estimate); creates nothing;
- ``pump(ctx, sweep)``: start queued members while the sweep has free slots (called by every
  look at the sweep: ``sweep launch``/``--follow``, ``sweep ps``/``show``, ``dqlctl ps``, the
  TUI); the run ids started;
- ``release(ctx, sweep)`` (optional): what ``sweep down`` frees after the members' runs (the
  pool's idle VMs).

Backends are named by import string (nothing loads before it is used), keyed by the sweep's
``--provider``. ``local`` is the queue backend (``dqlctl.sweeps.queue``): each member an
ordinary run on this machine, at most ``concurrency`` at once. ``aws``, ``gcp`` and ``azure`` are
the VM pool (``dqlctl.sweeps.pool``): at most ``concurrency`` VMs, each taking members from the
queue one after another. ``aws-batch`` (``--backend batch`` on aws) is the queue backend over
AWS Batch jobs (``dqlctl.sweeps.batch``). Not built yet, and refused with one line: ``auto``,
Google Cloud Batch and Azure Batch. Each would be one module here and one line in ``BACKENDS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from dqlctl.errors import UsageError

if TYPE_CHECKING:
    from dqlctl.context import Context
    from dqlctl.registry_sweeps import Sweep
    from dqlctl.sweeps.spec import MemberPlan, SweepSpec


class SweepBackend(Protocol):
    name: str

    def default_concurrency(self, ctx: Context) -> int: ...

    def plan(self, ctx: Context, spec: SweepSpec, members: list[MemberPlan]) -> dict[str, Any]:
        ...

    def pump(self, ctx: Context, sweep: Sweep) -> list[str]: ...


#: provider name -> "module:Class" of its sweep backend
BACKENDS: dict[str, str] = {"local": "dqlctl.sweeps.queue:QueueBackend",
                            **dict.fromkeys(("aws", "gcp", "azure"),
                                            "dqlctl.sweeps.pool:PoolBackend"),
                            "aws-batch": "dqlctl.sweeps.batch:BatchBackend"}
#: providers with a sweep backend planned but not built: why, in one line
PLANNED: dict[str, str] = {
    "auto": "the cheapest cloud's backend",
}


def backend(name: str) -> SweepBackend:
    """The sweep backend of provider ``name``; a one-line usage error for one not built."""
    import importlib

    if name not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        if name in PLANNED:
            raise UsageError(f"sweeps on {name!r} are not built yet ({PLANNED[name]}); "
                             f"available: {known}", field="provider")
        raise UsageError(f"no sweep backend for provider {name!r} (available: {known})",
                         field="provider")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()  # type: ignore[no-any-return]
