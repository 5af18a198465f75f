"""Resources tagged by dqlctl that no live run owns (they cost money, or clutter an account):
finding them (``ps --orphans``) and removing them (``down --orphans``, ``gc``).

Every resource dqlctl creates carries the run id, this registry's id (``OWNER_TAG``) and the OS
user. A resource is this registry's when its owner tag is this registry's id (or, made before
owner tags, when it has none and its run is in this registry): only those are judged by this
registry's runs and removed by default. Another registry's resources (a colleague's, in a shared
account) are listed but left alone unless ``all_owners``.
"""

from __future__ import annotations

from collections.abc import Callable

from dqlctl import registry as reg
from dqlctl.context import Context
from dqlctl.registry_sweeps import VM_BUSY
from providers import DEFAULT_PROVIDER
from providers import provider_names as all_providers
from providers.base import RUN_TAG, Instance, ProviderError, Resource, instance_resource

#: removal order: an instance first (it holds its group, key, role), the rest after it
KIND_ORDER = ("instance", "resource-group", "security-group", "firewall", "key-pair",
              "instance-profile", "role", "service-account")


def _run(ctx: Context, run_id: str | None) -> reg.Run | None:
    try:
        return ctx.registry.get(run_id) if run_id else None
    except reg.RegistryError:
        return None


def owned(ctx: Context, resource: Resource) -> bool:
    """Whether this registry made ``resource`` (its owner tag, or no owner tag and a run of
    this registry's)."""
    if resource.owner is not None:
        return resource.owner == ctx.registry_id
    return _run(ctx, resource.run_id) is not None


def orphans(ctx: Context, provider_names: list[str] | None = None,
            warn: Callable[[str], None] | None = None) -> list[Resource]:
    """Resources tagged by dqlctl that no live run of this registry owns, every kind and
    region; another registry's are listed too (``owned`` says which are this one's).

    A provider that cannot be asked (no credentials, say) is reported through ``warn``.
    """
    names = provider_names or sorted(set(all_providers()) & (
        {r.provider for r in ctx.registry.list()} | {DEFAULT_PROVIDER}))
    found: list[Resource] = []
    for name in names:
        try:
            resources = ctx.provider(name).list_resources({RUN_TAG: None})
        except ProviderError as exc:
            if warn is None:
                raise
            warn(f"{name}: not checked ({exc})")
            continue
        for res in resources:
            if owned(ctx, res):
                run = _run(ctx, res.run_id)
                if run is not None and not run.terminal:
                    continue  # a live run's own
                if run is not None and ctx.registry.pool_holds(run.id):
                    continue  # a sweep pool's VM launched for it (and its access), in use
            found.append(res)
    return found


def down_orphans(ctx: Context, resources: list[Resource],
                 all_owners: bool = False) -> tuple[list[Resource], list[Resource]]:
    """Remove the ``resources`` this registry owns (all of them with ``all_owners``),
    instances first; (removed, left alone)."""
    chosen = [r for r in resources if all_owners or owned(ctx, r)]
    left = [r for r in resources if r not in chosen]
    return remove(ctx, chosen), left


def remove(ctx: Context, resources: list[Resource]) -> list[Resource]:
    """Delete ``resources`` through their providers, instances first (what an instance holds, a
    security group or a role, goes after it); each deletion is idempotent."""

    def order(r: Resource) -> int:
        return KIND_ORDER.index(r.kind) if r.kind in KIND_ORDER else len(KIND_ORDER)

    done = []
    for res in sorted(resources, key=order):
        ctx.provider(res.provider).delete_resource(res)
        done.append(res)
    return done


def release_run(ctx: Context, run: reg.Run) -> list[Resource]:
    """Delete everything tagged with ``run`` (its recorded machine too, tagged or not): what a
    controller that died mid-launch created, of every kind. ProviderError when the provider
    cannot be asked."""
    found = ctx.provider(run.provider).list_resources({RUN_TAG: run.id})
    vm = ctx.registry.pool_vm(run.instance["instance_id"]) if run.instance else None
    if vm is not None and (vm.run_id != run.id or vm.state != VM_BUSY):
        pass  # a sweep pool's VM the run no longer holds: the pool's, not the run's
    elif run.instance and not any(r.kind == "instance" and r.resource_id ==
                                  run.instance.get("instance_id") for r in found):
        found.append(instance_resource(Instance.from_dict(run.instance)))
    removed = remove(ctx, found)
    if vm is not None and vm.run_id == run.id and vm.state == VM_BUSY:
        ctx.registry.pool_vm_gone(vm.instance_id, f"released with run {run.id}")
    return removed
