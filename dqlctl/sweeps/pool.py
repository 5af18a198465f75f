"""The VM-pool backend (``aws``, ``gcp``, ``azure``): a sweep's members run on at most
``concurrency`` VMs, each VM taking members from the sweep's queue one after another, and
terminated once no queued member is left for it.

Every member stays an ordinary run (``ps``, ``logs``, ``show``, ``down``, ``ssh`` work on it):
its row records the VM it ran on in ``runs.instance`` as any run does, and its history says
whether it got a new VM or one handed over from the member before (``pool_vm`` event: the
instance, ``reused``, ``after``: the previous member). The pool itself is ``pool_vms`` in the
registry (``dqlctl.registry_sweeps``): one row per VM with the member on it now (or last), its
state and the record the last member left (its folder on the VM).

A VM's life:

- a queued member with a free slot and no idle VM is launched as an ordinary run on a new VM
  (``lifecycle.start``); the VM joins the pool, BUSY with it, when the run reaches
  BOOTSTRAPPING. The VM carries that first member's tags, key, security group and role
  (``owner_run``): they stay while other members use it (``ps --orphans`` leaves them alone:
  ``Registry.pool_holds``) and go with the VM (the provider's ``terminate``);
- when a member ends, its machine is *released* (``lifecycle.release_machine``) instead of
  terminated: success, failure of its engine, or ``stop`` -> IDLE (a failed member's VM goes on
  with the next); a lost machine, a preemption, ``down`` of the member on it, a failed bring-up
  -> terminated, GONE;
- the next look (``pump``, run by every look at the sweep, as the ``local`` backend's: no
  daemon) hands an IDLE VM the next queued member: ``Registry.claim(vm=...)`` takes the member
  and the VM in one transaction, then the VM is handed over (``VmProvider.hand_over``) and the
  member brought up on it (``lifecycle.bring_up(vm=...)``: its engine in its own run folder);
- an IDLE VM no queued member takes (queue empty, or no slot) is terminated in the same look
  (IDLE -> RETIRING -> GONE; a terminate that fails stays RETIRING, retried by the next look,
  and the sweep is not DONE until it succeeds); ``sweep down`` terminates them all.

``down`` of one member terminates the VM only while that member is on it (BUSY with it): a
finished member's ``down`` leaves the VM the next member now runs on alone.

The VM's self-care between members (providers/local/supervisor.py ``--pool``): a member's
supervisor keeps its rules (the end grace, the idle backstop), so a VM whose controller vanished
for good still shuts itself down; results collected over SSH do not touch ``collected`` (which
would shut it down at once). The handover and the supervisor's shutdown race on one file created
exclusively (``next`` in the last member's folder): a handed-over VM's old supervisor waits for
the next engine to start and exits without shutting down (should the next engine never start,
it shuts down after ``HANDOVER_S``); a VM whose supervisor won the race is terminated and the
member gets a new VM.

Not done: packing several CPU-sized members on one VM (each VM runs one member at a time), and
a VM count other than the sweep's ``concurrency`` (``--vms``). A spot member relaunched after a
preemption gets a VM of its own, outside the pool (terminated when it ends).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from dqlctl.context import Context
from dqlctl.registry_sweeps import (
    NOT_STARTED,
    QUEUED,
    SWEEP_ACTIVE,
    SWEEP_DONE,
    VM_BUSY,
    VM_IDLE,
    VM_RETIRING,
    Member,
    PoolVm,
    Sweep,
)
from dqlctl.sweeps.queue import start_member
from dqlctl.sweeps.spec import MemberPlan, SweepSpec
from providers.base import Instance, LaunchSpec, ProviderError

#: VMs at once when the spec gives no ``concurrency``
DEFAULT_VMS = 4
#: what a member's job leaves in its VM record (``start_job``): not the next member's
JOB_FIELDS = ("workdir", "events_path", "results_dir", "runtime", "direct", "engine_image",
              "attempts")


class PoolBackend:
    """Members on a pool of at most ``concurrency`` VMs of the sweep's cloud."""

    name = "pool"

    def default_concurrency(self, ctx: Context) -> int:
        return DEFAULT_VMS

    def plan(self, ctx: Context, spec: SweepSpec, members: list[MemberPlan]) -> dict[str, Any]:
        from dqlctl.runs.request import LaunchRequest
        from dqlctl.runs.request import plan as run_plan

        vms = min(spec.concurrency or DEFAULT_VMS, len(members))
        one = run_plan(ctx, LaunchRequest(**members[0].request))
        machine = f"{one.get('instance_type', '?')} in {one.get('region', '?')}"
        return {"where": f"at most {vms} {spec.provider} VM(s) ({machine}), each taking members "
                         "from the queue one after another; a VM no member is left for is "
                         "terminated",
                "cost": f"{one.get('price', 'unknown')} per VM while it lives"}

    def pump(self, ctx: Context, sweep: Sweep) -> list[str]:
        return pump(ctx, sweep)

    def release(self, ctx: Context, sweep: Sweep) -> None:
        """``sweep down``: every VM no member holds terminated."""
        retire(ctx, sweep, "the sweep was stopped")


def pump(ctx: Context, sweep: Sweep) -> list[str]:
    """Idle VMs take the next queued members; then new VMs for queued members while slots are
    free; idle VMs left terminated; the sweep DONE once nothing is queued, running or alive.
    The run ids started."""
    registry = ctx.registry
    started: list[str] = []
    if sweep.state != SWEEP_ACTIVE:
        retire(ctx, sweep, "the sweep ended")
        return started
    queued = [m for m in registry.members(sweep.id) if m.state == QUEUED]
    for vm in registry.pool_vms(sweep.id, (VM_IDLE,)):
        while queued:
            member = queued.pop(0)
            if _start(ctx, sweep, member, vm):
                started.append(member.run_id)
                break
            now = {m.idx: m.state for m in registry.members(sweep.id)}
            if now.get(member.idx) != NOT_STARTED:
                queued.insert(0, member)  # not refused: no slot, or the VM was taken
                break
    for member in queued:
        if registry.live_count(sweep.id) >= sweep.concurrency:
            break
        if _start(ctx, sweep, member, None):
            started.append(member.run_id)
        elif registry.get_sweep(sweep.id).state != SWEEP_ACTIVE:
            break
    retire(ctx, sweep, "no queued member for it")
    alive = registry.pool_vms(sweep.id, (VM_BUSY, VM_IDLE, VM_RETIRING))
    if not any(m.state == QUEUED for m in registry.members(sweep.id)) \
            and registry.live_count(sweep.id) == 0 and not alive:
        registry.end_sweep(sweep.id, SWEEP_DONE)
    return started


def _start(ctx: Context, sweep: Sweep, member: Member, vm: PoolVm | None) -> bool:
    """``member`` started on the idle ``vm`` (handed over), or on a new VM (None)."""
    if vm is not None and not fits(ctx, vm, member):
        return False

    def on_vm(ctx: Context, run_id: str, provider: Any, spec: LaunchSpec) -> None:
        assert vm is not None
        run_on(ctx, sweep, vm, run_id, provider, spec)

    def on_new(ctx: Context, run_id: str, provider: Any, spec: LaunchSpec) -> None:
        new_vm(ctx, sweep, run_id, provider, spec)

    return start_member(ctx, sweep, member, extra={"pool": sweep.id},
                        vm=vm.instance_id if vm else None, run=on_vm if vm else on_new)


def new_vm(ctx: Context, sweep: Sweep, run_id: str, provider: Any, spec: LaunchSpec,
           provisioning: bool = False) -> None:
    """The claimed member (PENDING, or ``provisioning`` already) on a new VM, which joins the
    pool BUSY with it as soon as the run records it (BOOTSTRAPPING)."""
    from dqlctl.runs.lifecycle import bring_up, start
    from dqlctl.states import BOOTSTRAPPING, Run

    def joined(run: Run) -> None:
        if run.state == BOOTSTRAPPING and run.instance:
            ctx.registry.add_pool_vm(sweep_id=sweep.id, provider=run.provider, run_id=run_id,
                                     instance=run.instance)
            ctx.registry.add_event(run_id, "pool_vm", {
                "instance": run.instance["instance_id"], "reused": False})

    (bring_up if provisioning else start)(ctx, run_id, provider, spec, on_state=joined)


def run_on(ctx: Context, sweep: Sweep, vm: PoolVm, run_id: str, provider: Any,
           spec: LaunchSpec) -> None:
    """The claimed member (PENDING; the VM BUSY with it) brought up on ``vm``, handed over from
    the member before; a VM that is shutting down or does not answer is terminated and the
    member gets a new one."""
    from dqlctl.runs.lifecycle import bring_up, one_line
    from dqlctl.states import PROVISIONING

    registry = ctx.registry
    registry.transition(run_id, PROVISIONING)
    inst = Instance.from_dict(vm.instance)
    try:
        handed = bool(provider.hand_over(inst, run_id))
        why = "its supervisor was shutting it down"
    except Exception as exc:  # noqa: BLE001 - the VM does not answer: not reused
        handed, why = False, one_line(exc)
    if not handed:
        lost = {"instance": vm.instance_id, "reason": why}
        try:
            provider.terminate(inst)
        except ProviderError as exc:  # it still ends itself (its supervisor's rules)
            lost["terminate_failed"] = one_line(exc)
        registry.pool_vm_gone(vm.instance_id, f"not handed over: {why}")
        registry.add_event(run_id, "pool_vm_lost", lost)
        new_vm(ctx, sweep, run_id, provider, spec, provisioning=True)
        return
    registry.add_event(run_id, "pool_vm", {"instance": vm.instance_id, "reused": True,
                                           "after": vm.run_id, "member": vm.members + 1})
    for key in JOB_FIELDS:
        inst.extra.pop(key, None)
    bring_up(ctx, run_id, provider, spec, vm=inst)


def machine_key(spec: dict[str, Any]) -> tuple[Any, ...]:
    """What a VM was made for: a member fits a VM when its key is the VM's first member's
    (the same machine, image, runtime, SSH rule, and the role's bucket)."""
    extra = spec.get("extra") or {}
    results = str((spec.get("job") or {}).get("results_dir", ""))
    bucket = results.split("/")[2] if "://" in results else None
    return (spec.get("region"), spec.get("instance_type"), spec.get("gpu"), spec.get("spot"),
            spec.get("max_price"), spec.get("runtime"), spec.get("image"),
            extra.get("image_id"), extra.get("ssh_cidr"), bucket)


def fits(ctx: Context, vm: PoolVm, member: Member) -> bool:
    """Whether ``member`` can run on ``vm`` (``machine_key``)."""
    from dqlctl.errors import DqlctlError
    from dqlctl.runs.request import LaunchRequest, build_spec

    try:
        spec = asdict(build_spec(ctx, LaunchRequest(**member.request), member.run_id))
        return machine_key(spec) == machine_key(ctx.registry.get(vm.owner_run).spec)
    except DqlctlError:
        return True  # refused when it starts: CANCELLED with why


def retire(ctx: Context, sweep: Sweep, reason: str) -> None:
    """Terminate the sweep's VMs no member holds: the idle ones, and any still BUSY with a
    member that has ended (a controller that died between the two). A terminate that fails
    leaves the VM RETIRING with why, for the next look."""
    from dqlctl.runs.lifecycle import one_line

    registry = ctx.registry
    for vm in registry.pool_vms(sweep.id, (VM_IDLE, VM_BUSY)):
        if vm.state == VM_IDLE or (vm.run_id and registry.get(vm.run_id).terminal):
            registry.pool_vm_retiring(vm.instance_id, reason, expect=vm.state)
    for vm in registry.pool_vms(sweep.id, (VM_RETIRING,)):
        try:
            ctx.provider(vm.provider).terminate(Instance.from_dict(vm.instance))
        except ProviderError as exc:
            registry.pool_vm_retiring(vm.instance_id, f"terminate failed: {one_line(exc)}",
                                      expect=VM_RETIRING)
            continue
        registry.pool_vm_gone(vm.instance_id, reason)
