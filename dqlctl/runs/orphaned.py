"""Instances tagged by dqlctl that no live run owns (they cost money): finding and ending them."""

from __future__ import annotations

from collections.abc import Callable

from dqlctl import registry as reg
from dqlctl.context import Context
from providers import DEFAULT_PROVIDER
from providers import provider_names as all_providers
from providers.base import RUN_TAG, Instance, ProviderError


def orphans(ctx: Context, provider_names: list[str] | None = None,
            warn: Callable[[str], None] | None = None) -> list[Instance]:
    """Instances tagged by dqlctl that no live run owns.

    A provider that cannot be asked (no credentials, say) is reported through ``warn``.
    """
    names = provider_names or sorted(set(all_providers()) & (
        {r.provider for r in ctx.registry.list()} | {DEFAULT_PROVIDER}))
    found: list[Instance] = []
    for name in names:
        try:
            instances = ctx.provider(name).list_instances({RUN_TAG: None})
        except ProviderError as exc:
            if warn is None:
                raise
            warn(f"{name}: not checked ({exc})")
            continue
        for inst in instances:
            run_id = inst.tags.get(RUN_TAG)
            try:
                run = ctx.registry.get(run_id) if run_id else None
            except reg.RegistryError:
                run = None
            if run is None or run.terminal:
                found.append(inst)
    return found


def down_orphans(ctx: Context, instances: list[Instance]) -> list[str]:
    """Terminate ``instances``; their ids."""
    done = []
    for inst in instances:
        ctx.provider(inst.provider).terminate(inst)
        done.append(inst.instance_id)
    return done
