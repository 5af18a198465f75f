"""A spot run taken back mid-episode and recovered, as the GCE and Azure recovery e2e tests run it
(tests/test_gcp_recovery_e2e.py, tests/test_azure_recovery_e2e.py): one flow, the cloud's parts
passed in (``Cloud``).

The engine holds in the middle of episode ``HOLD_AFTER + 1`` (tests/held_engine.py), after the
periodic checkpoint of episode ``CHECKPOINT_EVERY``, so the machine always goes mid-episode:
with a notice first (the VM's metadata service announces it; the supervisor stops the engine,
which checkpoints there and uploads it) the run resumes from that checkpoint; without one, from
the last periodic checkpoint. Then the cloud deletes the VM, its processes and disk go, the same
address answers for the next machine (the sshd is restarted) and a look at the run relaunches it.

``figures`` returns what the closing note's table needs: episodes lost, seconds from the
preemption (the PREEMPTED transition) to RUNNING again, the run's cost across its VMs and the
extra cost (the lost work and the time to resume, at the run's $/h).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqlctl import registry as reg
from dqlctl import runs
from dqlctl.cli import main
from dqlctl.context import Context
from dqlctl.render import history_lines
from tests.held_engine import hold_in
from tests.test_aws_e2e import kill_vm_processes

EPISODES = 8
HOLD_AFTER = 4          # the engine holds in the middle of episode 5
CHECKPOINT_EVERY = 3    # the last periodic checkpoint before the hold: episode 3


@dataclass
class Cloud:
    """A cloud's part of the flow."""

    provider: str
    results: str                                # the run's results URI (its bucket)
    events: Callable[[str], list[dict[str, Any]]]   # experiment -> events.jsonl in the bucket
    notice: Callable[[], None]                  # the metadata service announces the end
    take_back: Callable[[Any], None]            # the cloud deletes the run's VM
    new_machine: Callable[[], None]             # the next VM's metadata announces nothing
    args: list[str] = field(default_factory=list)


def wait_for(what: str, check: Callable[[], Any], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def held_run(home: Path, cloud: Cloud, name: str) -> tuple[Any, Path]:
    """A spot run with its results in the bucket, its engine held mid-episode 5, notices
    polled every 0.1 s (``DQLCTL_NOTICE_POLL_S`` appended to the config's last table, the
    provider's ``vm_env``); the run and the file that releases the hold."""
    release = hold_in(home, HOLD_AFTER, name)
    config = home / "config.toml"
    text = config.read_text()
    last_table = text.rsplit("\n[", 1)[-1].splitlines()[0]
    assert last_table.endswith(".vm_env]"), f"the config's last table is [{last_table}"
    config.write_text(text + 'DQLCTL_NOTICE_POLL_S = "0.1"\n')
    assert main(["launch", "--provider", cloud.provider, "--gpu", "T4:1", "--data",
                 "test_small.csv", "--agent-type", "dql", "--command", "train",
                 "--ssh-cidr", "198.51.100.7/32", "--episodes", str(EPISODES), "--name", name,
                 "--results-dir", cloud.results, *cloud.args, "--", "--n_envs", "4",
                 "--checkpoint_every", str(CHECKPOINT_EVERY)], ctx=Context(home=home)) == 0
    (run,) = Context(home=home).registry.list()
    assert run.state == reg.RUNNING, run.reason
    wait_for("the engine did not reach its hold", Path(f"{release}.held").exists)
    return run, release


def noticed(run: Any, cloud: Cloud) -> dict[str, Any]:
    """The cloud announces the end while the engine is held mid-episode; once the engine has
    ended (its checkpoint uploaded): the notice and checkpoint events (from the VM's disk)."""
    workdir = Path(run.instance["extra"]["workdir"])
    cloud.notice()
    wait_for("the engine did not end on the notice", (workdir / "exit.json").exists)
    ended = json.loads((workdir / "exit.json").read_text())
    assert ended["exit_code"] == 143 and ended.get("notice"), ended
    events = [json.loads(x) for x in
              Path(run.instance["extra"]["events_path"]).read_text().splitlines()]
    kinds = [e["event"] for e in events]
    notice = events[kinds.index("notice")]
    checkpoint = events[kinds.index("checkpoint", kinds.index("notice"))]
    assert checkpoint["episode"] == HOLD_AFTER and "://" in checkpoint["path"], checkpoint
    return {"notice": notice, "checkpoint": checkpoint}


def noticed_within(run: Any, cloud: Cloud, window_s: float) -> dict[str, Any]:
    """``noticed``, and the checkpoint is in the run's bucket within the cloud's window."""
    seen = noticed(run, cloud)
    assert seen["checkpoint"]["path"].startswith(cloud.results.split("://")[0] + "://")
    assert 0 <= seen["checkpoint"]["ts"] - seen["notice"]["ts"] < window_s
    return seen


def lost_no_more_than_allowed(figures: dict[str, Any], notice: bool) -> None:
    """Each episode once over both machines; nothing after a notice lost, else at most one
    checkpoint interval."""
    assert figures["episode_repeats"] == 0 and figures["vms"] == 2, figures
    if notice:
        assert figures["episodes_lost"] == 0, figures
    else:
        assert 0 < figures["episodes_lost"] <= CHECKPOINT_EVERY, figures


def taken_back(vm: dict[str, Any], run: Any, cloud: Cloud, release: Path) -> None:
    """The cloud takes the machine back, with nobody watching: the instance is deleted, its
    processes and disk are gone, the address answers for the next machine."""
    cloud.take_back(run)
    os.kill(vm["pid"], signal.SIGKILL)
    kill_vm_processes(run.id)
    shutil.rmtree(run.instance["extra"]["workdir"], ignore_errors=True)
    vm["restart"]()
    cloud.new_machine()
    release.touch()         # the next machine's engine runs on


def recovered(home: Path, run: Any) -> Any:
    """A look at the run relaunches it; followed to its end (SUCCEEDED)."""
    ctx = Context(home=home)
    (row,) = runs.reconcile_all(ctx)
    assert (row.state, row.spec["extra"]["recoveries"]) == (reg.RUNNING, 1), row.reason
    assert "recovered" in row.reason and "--resume" in row.spec["job"]["engine_args"]
    moves = [e["to_state"] for e in ctx.registry.events(run.id)]
    assert [m for m in moves if m][-4:] == [reg.PREEMPTED, reg.RECOVERING, reg.BOOTSTRAPPING,
                                            reg.RUNNING], moves
    final = runs.follow(Context(home=home), row)
    assert final.state == reg.SUCCEEDED, final.reason
    assert final.instance["extra"]["direct"] is True
    return final


def figures(home: Path, final: Any, cloud: Cloud, name: str, notice: bool) -> dict[str, Any]:
    """The closing note's figures for this run (see the module docstring); checks that every
    episode is in the bucket's events.jsonl and how the resumed engine started."""
    log = (Path(final.instance["extra"]["workdir"]) / "engine.log").read_text()
    found = re.search(r"resumed from ckpt-\d+\.pt: episode (\d+)/\d+, ([\d,]+) env steps", log)
    assert found is not None, log[-2000:]
    resumed_episode, resumed_steps = int(found.group(1)), int(found.group(2).replace(",", ""))
    events = cloud.events(name)
    episodes = [e for e in events if e["event"] == "episode"]
    numbers = [e["episode"] for e in episodes]
    assert sorted(set(numbers)) == list(range(1, EPISODES + 1)), numbers
    first = {}
    for e in episodes:
        first.setdefault(e["episode"], e)
    per_episode = first[2]["env_steps"] - first[1]["env_steps"]
    at_hold = first[HOLD_AFTER]["env_steps"] + per_episode / 2      # where the machine went
    resumed_at = first[resumed_episode]["env_steps"] if resumed_episode else 0
    lost = max(0.0, (at_hold - max(resumed_at, resumed_steps)) / per_episode)
    episode_s = (first[HOLD_AFTER]["ts"] - first[1]["ts"]) / (HOLD_AFTER - 1)
    marks = Context(home=home).registry.events(final.id)
    # the run's history, as `dqlctl show` prints it: (notice -> checkpoint ->) PREEMPTED ->
    # RECOVERING -> SUCCEEDED, in that order
    lines = history_lines(marks)
    order = (([f"  notice  ({cloud.provider} ", f"  checkpoint  (episode {HOLD_AFTER}, uploaded"]
              if notice else []) + ["  PREEMPTED  (", "  RECOVERING", "  SUCCEEDED"])
    at = [next((i for i, x in enumerate(lines) if m in x), -1) for m in order]
    assert -1 not in at and at == sorted(at), "\n".join(lines)
    preempted = next(e["ts"] for e in marks if e["to_state"] == reg.PREEMPTED)
    running = next(e["ts"] for e in marks if e["to_state"] == reg.RUNNING
                   and e["ts"] > preempted)
    resume_s = running - preempted
    price = final.price_per_hour or 0.0
    out = {"cloud": cloud.provider, "notice": notice, "episodes_lost": round(lost, 2),
           "episode_repeats": len(numbers) - len(set(numbers)),
           "resume_s": round(resume_s, 2), "price_per_hour": price,
           "billed_s": round(final.billed_seconds(time.time()), 2),
           "run_cost_usd": round(final.cost_at(time.time()), 6),
           "extra_cost_usd": round(price * (resume_s + lost * episode_s) / 3600, 6),
           "episode_s": round(episode_s, 3),
           "vms": 1 + sum(e["kind"] == "recovering" for e in marks)}
    print(f"\nspot recovery figures: {json.dumps(out)}")
    return out
