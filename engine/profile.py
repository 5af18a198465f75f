"""Throughput profiles: env steps/s and gradient updates/s of one engine configuration on the
machine it runs on (``dql-trading profile``; ``dqlctl profile`` stores the result).

One measuring loop: the trainer's own. Each episode of :func:`engine.train.run_training`
records ``steps_per_s`` over its stepping and learning (validation excluded); a profile is a
short training run read through :func:`loop_seconds`, the same reading
``bench/engine_throughput.py`` makes of its runs, and :func:`throughput_record` turns any
finished training (a profile, or a real run: its ``throughput`` event) into the same record:

``agent_type, hidden_sizes, batch_size, n_envs, replay_ratio`` (the configuration), ``device``
and ``device_name`` (the CPU model, ``engine.runtime.cpu_model``, or the GPU's name),
``torch_threads``, ``cpu_count``, ``steps_per_s`` and ``updates_per_s`` (steady state: the
episodes after learning had started; all of them when none had), ``val_overhead`` (the time
outside the loop, validation after each episode and set-up, as a fraction of the loop's),
``env_steps``, ``updates``, ``loop_s``, ``torch``, ``measured_at`` (UTC), ``source``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from engine.config import Config

DEFAULT_SECONDS = 5.0


def loop_seconds(history: Sequence[dict[str, Any]], *, steady: bool = False) -> tuple[float, int,
                                                                                      int]:
    """(seconds, env steps, updates) of the training loop over ``history`` (the trainer's
    episode records; an ensemble's carry ``member``): each episode's env steps over its
    ``steps_per_s``. ``steady``: only episodes that began with learning under way (the first
    ones, before ``learning_starts``, step without updates and would overstate the rate);
    all of them when no episode qualifies."""
    prev: dict[Any, tuple[int, int]] = {}
    rows = []
    for h in history:
        member = h.get("member")
        steps0, updates0 = prev.get(member, (0, 0))
        steps, updates = int(h["env_steps"]), int(h.get("updates") or 0)
        prev[member] = (steps, updates)
        if h.get("steps_per_s"):
            rows.append((steps - steps0, updates - updates0, float(h["steps_per_s"]),
                         updates0 > 0))
    if steady and any(r[3] for r in rows):
        rows = [r for r in rows if r[3]]
    return (sum(d / sps for d, _, sps, _ in rows), sum(d for d, _, _, _ in rows),
            sum(u for _, u, _, _ in rows))


def throughput_record(cfg: Config, rt: Any, result: Any, *, source: str = "run",
                      now: float | None = None) -> dict[str, Any] | None:
    """The profile record of a finished training (``result``: a ``TrainResult``) made with
    ``cfg`` on ``rt`` (``engine.runtime.RuntimeInfo``); None when it stepped too little to say."""
    cfg = cfg.resolved()
    loop, steps, updates = loop_seconds(result.history, steady=True)
    if loop <= 0 or steps <= 0:
        return None
    all_loop, _, _ = loop_seconds(result.history)
    members = max(1, len(getattr(result, "members", None) or []))
    wall = float(getattr(result, "wall_s", 0.0) or 0.0)
    # an ensemble's members train one after another: their loops add up within its wall time
    overhead = max(0.0, wall / all_loop - 1.0) if all_loop > 0 and wall > 0 else 0.0
    when = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return {"agent_type": cfg.agent_type, "hidden_sizes": list(cfg.hidden_sizes or ()),
            "batch_size": int(cfg.batch_size), "n_envs": int(cfg.n_envs),
            "replay_ratio": float(cfg.replay_ratio), "device": str(rt.device).split(":")[0],
            "device_name": rt.device_name, "torch_threads": int(rt.torch_threads),
            "cpu_count": int(rt.cpu_count), "steps_per_s": round(steps / loop, 1),
            "updates_per_s": round(updates / loop, 2), "val_overhead": round(overhead, 4),
            "env_steps": int(steps), "updates": int(updates), "loop_s": round(loop, 3),
            "members": members, "torch": rt.torch_version,
            "measured_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "source": source}


def measure(cfg: Config, seconds: float = DEFAULT_SECONDS, *, data: Any = None,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``cfg`` (its agent, network, batch, n_envs, device, threads) on its data for about
    ``seconds`` of loop time past ``learning_starts`` and return its profile record.

    Two runs of :func:`engine.train.run_training`: a short one (enough episodes to get past
    ``learning_starts``) gives a first rate, which sizes the measured one. Nothing is written.
    """
    from engine.runtime import detect
    from engine.train import as_markets, prepare_data, run_training

    if not seconds > 0:
        raise ValueError(f"seconds must be more than 0, got {seconds}")
    cfg = dataclasses.replace(cfg.resolved(), checkpoint_every=0, resume=False, patience=0)
    rt = detect(cfg.device, cfg.torch_threads)
    data = data if data is not None else prepare_data(cfg)
    steps_per_episode = sum(math.ceil(m.train_steps / cfg.n_envs) * cfg.n_envs
                            for m in as_markets(data))
    quiet = log or (lambda _m: None)
    warm = max(2, math.ceil(cfg.learning_starts / steps_per_episode) + 2)
    first = run_training(dataclasses.replace(cfg, episodes=warm), data=data, log=quiet,
                         runtime_info=rt)
    loop, steps, _ = loop_seconds(first.history, steady=True)
    rate = steps / loop if loop > 0 else 1.0
    episodes = max(warm, math.ceil((seconds * rate + cfg.learning_starts) / steps_per_episode))
    result = run_training(dataclasses.replace(cfg, episodes=episodes), data=data, log=quiet,
                          runtime_info=rt)
    record = throughput_record(cfg, rt, result, source="profile")
    if record is None:
        raise RuntimeError("the profile run made no measurable step")
    return record


def describe(record: dict[str, Any]) -> str:
    """One line: the configuration, the device and the rates."""
    sizes = "-".join(str(h) for h in record.get("hidden_sizes") or ()) or "?"
    return (f"{record['agent_type']} {sizes}, batch {record['batch_size']}, "
            f"{record['n_envs']} envs on {record['device_name']} ({record['device']}, "
            f"{record['torch_threads']} thread{'s' if record['torch_threads'] != 1 else ''}): "
            f"{record['steps_per_s']:,.0f} env steps/s, {record['updates_per_s']:,.0f} "
            f"updates/s, validation +{100 * record['val_overhead']:.0f}%")
