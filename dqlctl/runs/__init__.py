"""Run orchestration, provider-agnostic: launch, follow, reconcile, stop, what runs cost.

Core functions return data (``Run`` rows, event dicts); the CLI verbs and the TUI render them
(``dqlctl.render``). The lifecycle is DESIGN.md's: each step is committed to the registry before
it is acted on, and once a run is RUNNING it belongs to its instance, not to the dqlctl process
that started it; any later look reconciles it with what the provider reports.

One module per concern, in layers; a module imports only from layers below it (no cycles):

1. ``request``  LaunchRequest, validation, build_spec, plan
   ``jobs``     a job's handle, Follower, read_all_lines, log_tail, the engine-events fold
   ``orphaned`` tagged instances no live run owns
   ``leases``   hold: the controller lease renewed while this process works on a run
   ``failover`` launch_somewhere: on no capacity, the next region offering the machine
2. ``lifecycle`` launch (credentials first), bring_up / finish_bring_up (teardown on failure),
   down, the budget of a run being brought up
3. ``costs``    run_cost (arithmetic on the registry row), the budget, spend by month
4. ``recovery`` machine_lost, recoverable, recover;  ``summary`` the JSON shape, exit code
5. ``reconciling`` reconcile, reconcile_all, finish_if_ended, ``EXITS``: every non-terminal
   state's exit (what reconcile checks there, its deadline) for a run nobody works on
6. ``following`` follow, iter_log
7. ``control``  stop, shell_command

``from dqlctl import runs; runs.launch(...)``: the public names are re-exported here. (No module
is named like a function it exports: ``runs.follow`` is the function, ``runs.following`` its
module.)
"""

from __future__ import annotations

from dqlctl.runs.control import ShellCommand, shell_command, stop
from dqlctl.runs.costs import budget_left, enforce_budget, run_cost, run_costs, spend_by_month
from dqlctl.runs.following import POLL_S, follow, iter_log
from dqlctl.runs.jobs import (
    Follower,
    apply_engine_events,
    instance_of,
    job_handle,
    log_tail,
    read_all_lines,
)
from dqlctl.runs.lifecycle import SECRET_ENV, bring_up, down, launch
from dqlctl.runs.orphaned import down_orphans, orphans, owned
from dqlctl.runs.reconciling import EXITS, finish_if_ended, reconcile, reconcile_all
from dqlctl.runs.recovery import machine_lost, recover, recoverable
from dqlctl.runs.request import (
    AGENT_TYPES,
    ENGINE_COMMANDS,
    LaunchRequest,
    build_spec,
    plan,
    resolve_auto,
    validate_request,
)
from dqlctl.runs.summary import run_detail, run_exit_code, run_summary

__all__ = [
    "AGENT_TYPES", "ENGINE_COMMANDS", "EXITS", "POLL_S", "SECRET_ENV", "Follower",
    "LaunchRequest",
    "ShellCommand", "apply_engine_events", "bring_up", "budget_left", "build_spec",
    "down", "down_orphans", "enforce_budget", "finish_if_ended", "follow",
    "instance_of", "iter_log", "job_handle", "launch", "log_tail", "machine_lost", "orphans",
    "owned",
    "plan", "read_all_lines", "reconcile", "reconcile_all", "recover",
    "recoverable", "resolve_auto", "run_cost", "run_costs", "run_detail", "run_exit_code",
    "run_summary", "shell_command", "spend_by_month", "stop", "validate_request",
]
