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

:func:`fill` (``profile --fill``) runs :func:`measure` at several (n_envs, batch) pairs at the
configuration's replay ratio (its own, and :data:`CPU_PAIRS` or :data:`GPU_PAIRS` by the device)
and ranks them: the speed-up each gives over the configuration's own. Those two settings change
what a run learns, so the fastest is a recommendation for speed (:data:`LEARNING_CAVEAT`).
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


# -- fill: the (n_envs, batch) that make the engine fastest here ---------------------------------

#: (n_envs, batch) pairs tried on a GPU (``fill`` on CUDA, ``bench/engine_throughput.py``'s GPU
#: figures): at the default replay ratio 16, 4 updates per vectorised step each.
GPU_PAIRS: tuple[tuple[int, int], ...] = ((256, 1024), (1024, 4096), (4096, 16384),
                                          (8192, 32768))
#: the pairs tried on a CPU besides the configuration's own (about 30 s in all at --seconds 2).
CPU_PAIRS: tuple[tuple[int, int], ...] = ((64, 256), (64, 1024), (256, 256), (256, 1024))

LEARNING_CAVEAT = ("n_envs and batch change what a run learns, not only its speed: more "
                   "environments play shorter segments of the training split each, and a larger "
                   "batch at the same replay ratio makes fewer, larger updates. The fastest pair "
                   "is a recommendation for speed: check it with a sweep (dqlctl sweep) before "
                   "a default changes.")


def default_pairs(cfg: Config, device: str) -> tuple[tuple[int, int], ...]:
    """The (n_envs, batch) pairs :func:`fill` tries on ``device`` (cpu, cuda, cuda:N, mps):
    the configuration's own first, then :data:`GPU_PAIRS` on a GPU, :data:`CPU_PAIRS` else."""
    own = (int(cfg.n_envs), int(cfg.batch_size))
    more = CPU_PAIRS if device == "cpu" else GPU_PAIRS
    return tuple(dict.fromkeys((own, *more)))


def parse_pairs(text: str) -> tuple[tuple[int, int], ...]:
    """``64:256,256:1024`` -> ((64, 256), (256, 1024)); ValueError naming what is wrong."""
    try:
        pairs = tuple((int(n), int(b)) for n, b in (p.split(":") for p in text.split(",")))
    except ValueError:
        pairs = ()
    if not pairs or any(n < 1 or b < 1 for n, b in pairs):
        raise ValueError(f"expected n_envs:batch pairs of positive integers like "
                         f"64:256,256:1024, got {text!r}")
    return pairs


def skip_reason(cfg: Config, n_envs: int, batch: int, data: Any) -> str:
    """Why the pair cannot run on ``cfg`` and ``data`` (prepared: one market or several); ''
    when it can."""
    from engine.train import as_markets

    if batch > cfg.buffer_size:
        return f"batch {batch:,} exceeds the replay buffer (--buffer_size {cfg.buffer_size:,})"
    markets = as_markets(data)
    per_market = n_envs if len(markets) == 1 else math.ceil(n_envs / len(markets))
    bars = min(m.train_steps for m in markets)
    if per_market > bars:
        return (f"{n_envs:,} environments exceed the data's {bars:,} training bars"
                + (" per market" if len(markets) > 1 else ""))
    return ""


def fill(cfg: Config, seconds: float = DEFAULT_SECONDS, *,
         pairs: Sequence[tuple[int, int]] | None = None, data: Any = None,
         log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Measure ``cfg`` at each (n_envs, batch) pair (:func:`measure`, about ``seconds`` each,
    at the configuration's replay ratio; default :func:`default_pairs` for its device; the
    configuration's own pair is always added) and return the records fastest first, each with
    ``speedup`` (its env steps/s over the own pair's; None when that one could not run) and
    ``own``; then the pairs that could not run: ``{"n_envs", "batch_size", "skipped": why}``
    (a batch larger than the buffer, more environments than training bars, a failure such as
    the GPU's memory)."""
    from engine.runtime import pick_device
    from engine.train import prepare_data

    if not seconds > 0:
        raise ValueError(f"seconds must be more than 0, got {seconds}")
    cfg = cfg.resolved()
    own = (int(cfg.n_envs), int(cfg.batch_size))
    device = pick_device(cfg.device).split(":")[0]
    chosen = default_pairs(cfg, device) if pairs is None else tuple(
        dict.fromkeys((own, *((int(n), int(b)) for n, b in pairs))))
    data = data if data is not None else prepare_data(cfg)
    say = log or (lambda _m: None)
    measured: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for n_envs, batch in chosen:
        if n_envs < 1 or batch < 1:
            raise ValueError(f"n_envs and batch must be at least 1, got {n_envs}:{batch}")
        why = skip_reason(cfg, n_envs, batch, data)
        if not why:
            say(f"measuring n_envs {n_envs:,}, batch {batch:,} ...")
            try:
                rec = measure(dataclasses.replace(cfg, n_envs=n_envs, batch_size=batch),
                              seconds, data=data)
            except RuntimeError as exc:  # the GPU's memory, a step that measured nothing
                why = f"failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
                _free_device_memory()
            else:
                measured.append({**rec, "own": (n_envs, batch) == own})
        if why:
            skipped.append({"n_envs": n_envs, "batch_size": batch, "skipped": why})
            say(f"skipped n_envs {n_envs:,}, batch {batch:,}: {why}")
    base = next((r["steps_per_s"] for r in measured if r["own"]), None)
    for r in measured:
        r["speedup"] = round(r["steps_per_s"] / base, 2) if base else None
    measured.sort(key=lambda r: -r["steps_per_s"])
    return [*measured, *skipped]


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fill_lines(records: Sequence[dict[str, Any]],
               flag: Callable[[str], str] = lambda name: f"--{name}") -> list[str]:
    """The text of a :func:`fill`: one line per pair (env steps/s, x the configuration's own;
    the skipped ones with their reason), the recommendation ("fastest: --n_envs N --batch_size
    B (k x this configuration)"; ``flag`` spells a setting's flag, e.g. dqlctl's --n-envs) and
    :data:`LEARNING_CAVEAT`."""
    lines = []
    for r in records:
        pair = f"n_envs {r['n_envs']:>6,}, batch {r['batch_size']:>7,}"
        if r.get("skipped"):
            lines.append(f"{pair}: skipped: {r['skipped']}")
            continue
        times = (", this configuration" if r.get("own") else "" if r.get("speedup") is None
                 else f", {r['speedup']:.2f} x this configuration")
        lines.append(f"{pair}: {r['steps_per_s']:>12,.0f} env steps/s, "
                     f"{r['updates_per_s']:>9,.0f} updates/s{times}")
    best = next((r for r in records if not r.get("skipped")), None)
    if best is None:
        lines.append("fastest: none: no pair could run here")
        return lines
    times = ("speed-up unknown: this configuration could not run" if best.get("speedup") is None
             else f"{best['speedup']:.2f} x this configuration"
             + (": it is already the fastest" if best.get("own") else ""))
    lines.append(f"fastest: {flag('n_envs')} {best['n_envs']} {flag('batch_size')} "
                 f"{best['batch_size']} ({times}) on {best['device_name']} ({best['device']})")
    lines.append(LEARNING_CAVEAT)
    return lines
