"""Throughput profiles, and how long a run takes on an offer: the one place for the duration
arithmetic (``dqlctl cost --episodes``, ``launch --dry-run``, the TUI's launch form and cost
screen all get their durations from :func:`run_duration`, through ``estimate.quote``).

A profile is the engine's measured rate (``engine.profile``: ``dql-trading profile``, ``dqlctl
profile``, or the ``throughput`` event a run sends after training) for one configuration on one
device: env steps/s and updates/s, keyed by (agent type, network sizes, batch size, n_envs,
device, device model). Profiles come from two places: ``data/profiles.json`` (measured on the
machine the package was built on, with its provenance) and ``<dqlctl home>/profiles.json``
(measured here: ``dqlctl profile``, and every run that finished training). Same key: the newest
wins.

Duration of a run (``RunShape``: the bars of the training split, episodes, agent, network,
batch, n_envs)::

    env steps  = episodes x ceil(train bars / n_envs) x n_envs      (engine.train.Trainer)
    run hours  = env steps / steps_per_s x (1 + val_overhead) / 3600
    hours      = run hours + bring-up (estimate.RESTART_OVERHEAD_H: machine, bootstrap)

Phases (``phase_duration``; ``RunShape.trials`` > 0 when the run tunes first: ``full-workflow``
without ``--skip_tuning``, or ``tune``). The tuning phase is ``trials`` (``--n_iter``; a grid
search: at most the grid's size) independent trials of ``trial_episodes``
(``--tuning_episodes``) episodes each, run by ``engine.tune`` in worker processes, one torch
thread each, on the CPU cores (``--device auto``: trials never use the GPU)::

    workers    = min(trials, the offer's vCPUs)          (engine.tune.default_workers)
    waves      = ceil(trials / workers)
    tune hours = waves x one trial's run hours           (a trial: episodes = trial_episodes,
                                                          on the nearest CPU profile)
    phase tune : tune hours + bring-up
    phase train: run hours + bring-up                    (as above: today's figure)
    phase all  : tune hours + run hours + bring-up       (one machine: one bring-up)

A split (tune on one machine, train on another) pays two bring-ups: the two phases' figures
added (``estimate.PhasePlan``). vCPUs are hardware threads: two trials on one core's two
threads each run slower than the 1-thread profile says, so the tune figure errs short on
machines with more trials than cores (``TUNE_SMT_PM`` widens its +-).

``steps_per_s`` is the nearest profile's, by device:

- a CPU offer: the nearest CPU profile (same agent and network first, then the closest batch
  and n_envs). The offer's own CPU model is not in the catalog, so the figure is "measured on
  <that CPU>", with ``+-`` for another CPU (and more when the configuration differs). One run
  uses one or two cores: a larger CPU type is not faster for it.
- a GPU offer: a profile measured on that GPU model when there is one; else a **guess**, said
  as such: the update on a GPU is bound by kernel launches, about ``GPU_UPDATE_S`` per update
  (0.2-0.5 ms, ~25 kernels per layer pair) whatever the batch, plus ``GPU_STEP_S`` per
  vectorised step (acting, the environment's numpy step, one host sync): steps/s = n_envs /
  (GPU_STEP_S + updates per step x GPU_UPDATE_S) (bench/engine_throughput.py, "What a GPU
  changes"). +-60%. One run uses one GPU, whatever the count.

Standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from providers.prices.catalog import DATA_DIR, fmt_age

SHIPPED_PATH = DATA_DIR / "profiles.json"
STORE_NAME = "profiles.json"
STORE_SCHEMA = 1

# The GPU guess (see the module docstring): seconds per update of a 2-hidden-layer network
# (more layers: proportionally more kernels) and per vectorised step.
GPU_UPDATE_S = 0.35e-3
GPU_STEP_S = 0.15e-3
GPU_GUESS_PM = 0.6
CPU_OTHER_PM = 0.5          # the offer's CPU is not the profile's
CPU_SAME_PM = 0.25          # the same CPU model (run-to-run and load)
DEFAULT_VAL_OVERHEAD = 0.05
TUNE_SMT_PM = 0.25          # trials on both threads of a core: slower than the 1-thread profile
PHASES = ("train", "tune", "all")


@dataclass(frozen=True)
class Profile:
    """One measured rate of one configuration on one device."""

    agent_type: str
    hidden_sizes: tuple[int, ...]
    batch_size: int
    n_envs: int
    device: str                     # cpu | cuda | mps
    device_name: str                # the CPU model or the GPU's name
    steps_per_s: float
    updates_per_s: float = 0.0
    val_overhead: float = 0.0
    replay_ratio: float = 16.0
    torch_threads: int = 1
    measured_at: str = ""           # ISO UTC
    source: str = "profile"         # profile | run
    where: str = ""                 # provenance: the machine, the command, or the run

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.agent_type, self.hidden_sizes, self.batch_size, self.n_envs, self.device,
                self.device_name)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out

    @classmethod
    def from_dict(cls, rec: Mapping[str, Any], where: str = "") -> Profile:
        """A profile from an engine record (``engine.profile``) or a stored one; ValueError
        when it lacks a field or a rate is not positive."""
        try:
            p = cls(agent_type=str(rec["agent_type"]),
                    hidden_sizes=tuple(int(h) for h in rec.get("hidden_sizes") or ()),
                    batch_size=int(rec["batch_size"]), n_envs=int(rec["n_envs"]),
                    device=str(rec.get("device") or "cpu"),
                    device_name=str(rec.get("device_name") or "CPU"),
                    steps_per_s=float(rec["steps_per_s"]),
                    updates_per_s=float(rec.get("updates_per_s") or 0.0),
                    val_overhead=float(rec.get("val_overhead") or 0.0),
                    replay_ratio=float(rec.get("replay_ratio") or 16.0),
                    torch_threads=int(rec.get("torch_threads") or 1),
                    measured_at=str(rec.get("measured_at") or ""),
                    source=str(rec.get("source") or "profile"),
                    where=where or str(rec.get("where") or ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a throughput profile: {exc}") from None
        if not (p.steps_per_s > 0 and math.isfinite(p.steps_per_s)) or p.batch_size <= 0 \
                or p.n_envs <= 0:
            raise ValueError("not a throughput profile: rates and sizes must be positive")
        return p

    def age_s(self, now: float) -> float | None:
        try:
            ts = datetime.strptime(self.measured_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return None
        return max(0.0, now - ts.timestamp())


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return []           # an unreadable store is ignored, never half-used
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), list):
        return []
    return [p for p in data["profiles"] if isinstance(p, dict)]


def shipped() -> list[Profile]:
    """The profiles that come with the package (``data/profiles.json``)."""
    data = json.loads(SHIPPED_PATH.read_text(encoding="utf-8"))
    where = data.get("provenance", {}).get("machine", "the build machine")
    return [Profile.from_dict(p, where=f"shipped, {where}") for p in data["profiles"]]


def store_path(home: str | os.PathLike[str]) -> Path:
    """The profiles measured here: ``<dqlctl home>/profiles.json`` (data, not cache: they
    cost a run to make)."""
    return Path(home) / STORE_NAME


def load_profiles(home: str | os.PathLike[str] | None = None) -> list[Profile]:
    """The shipped profiles with the home's laid over them (same key: the newest wins)."""
    by_key: dict[tuple[Any, ...], Profile] = {p.key: p for p in shipped()}
    if home is not None:
        for rec in _read(store_path(home)):
            try:
                p = Profile.from_dict(rec)
            except ValueError:
                continue
            old = by_key.get(p.key)
            if old is None or p.measured_at >= old.measured_at:
                by_key[p.key] = p
    return list(by_key.values())


def save_profile(home: str | os.PathLike[str], record: Mapping[str, Any],
                 where: str = "") -> Profile:
    """Keep ``record`` (an engine profile record) in the home's store, replacing the one with
    its key; atomic. ValueError when it is not a profile."""
    profile = Profile.from_dict(record, where=where)
    path = store_path(home)
    kept = []
    for rec in _read(path):
        try:
            if Profile.from_dict(rec).key != profile.key:
                kept.append(rec)
        except ValueError:
            continue
    kept.append(profile.to_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"schema": STORE_SCHEMA, "profiles": kept}, indent=1),
                   encoding="utf-8")
    os.replace(tmp, path)
    return profile


# -- a run and its duration ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunShape:
    """What decides a run's length: its data (bars in the training split), episodes and the
    engine configuration."""

    train_bars: int
    episodes: int
    agent_type: str
    hidden_sizes: tuple[int, ...]
    batch_size: int
    n_envs: int
    replay_ratio: float = 16.0
    data: str = ""
    trials: int = 0                 # tuning trials first (0: no tuning phase)
    trial_episodes: int = 0         # episodes of each trial

    @property
    def env_steps(self) -> int:
        """As the trainer counts them: every episode is ceil(L / n) vectorised steps of n."""
        return self.episodes * math.ceil(self.train_bars / self.n_envs) * self.n_envs

    def trial(self) -> RunShape:
        """One tuning trial: this configuration for ``trial_episodes`` episodes."""
        return dataclasses.replace(self, episodes=self.trial_episodes, trials=0,
                                   trial_episodes=0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        out["env_steps"] = self.env_steps
        return out


@dataclass(frozen=True)
class Duration:
    """How long a run takes on one offer, and where the rate comes from."""

    hours: float | None             # run + bring-up; None: no profile to go by
    run_hours: float | None
    bring_up_h: float
    env_steps: int
    steps_per_s: float | None
    basis: str                      # measured | nearest | cpu-other | gpu-guess | none
    provenance: str                 # what the table prints
    plus_minus: float | None        # relative uncertainty (0.5 = +-50%)
    phase: str = "train"            # train | tune | all
    tune_hours: float | None = None   # tune and all: the tuning phase's hours (no bring-up)
    train_hours: float | None = None  # all: the training phase's hours (no bring-up)
    workers: int | None = None      # tune and all: trials at once
    waves: int | None = None        # tune and all: ceil(trials / workers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gpu_matches(gpu: str, device_name: str) -> bool:
    """A catalog GPU name (``T4``, ``A100-80GB``, ``A10G``) against a torch device name
    (``Tesla T4``, ``NVIDIA A100-SXM4-80GB``, ``NVIDIA A10G``)."""
    want = gpu.upper().split("-")
    have = device_name.upper().replace("-", " ").split()
    return want[0] in have and all(part in have for part in want[1:])


def _distance(p: Profile, shape: RunShape) -> float:
    d = abs(math.log2(p.batch_size / shape.batch_size)) + abs(math.log2(p.n_envs / shape.n_envs))
    if p.agent_type != shape.agent_type:
        d += 10
    if p.hidden_sizes != shape.hidden_sizes:
        d += 3
    return d


def nearest(profiles: Iterable[Profile], shape: RunShape, device: str,
            gpu: str | None = None) -> Profile | None:
    """The profile closest to ``shape`` on ``device`` (``cuda``: only ones of the ``gpu``
    model); the newest among equals."""
    found = [p for p in profiles if p.device == device
             and (gpu is None or _gpu_matches(gpu, p.device_name))]
    if not found:
        return None
    return min(found, key=lambda p: (_distance(p, shape), -_ts(p.measured_at)))


def _ts(iso: str) -> float:
    try:
        return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return 0.0


def gpu_guess_steps_per_s(shape: RunShape) -> float:
    """The GPU guess of the module docstring: launch-bound updates plus a per-step cost."""
    updates_per_step = shape.n_envs * shape.replay_ratio / shape.batch_size
    per_update = GPU_UPDATE_S * max(1, len(shape.hidden_sizes) + 1) / 3
    return shape.n_envs / (GPU_STEP_S + updates_per_step * per_update)


def _when(p: Profile, now: float) -> str:
    age = p.age_s(now)
    return "at an unknown time" if age is None else f"{fmt_age(age)} ago"


def _config(p: Profile) -> str:
    sizes = "-".join(map(str, p.hidden_sizes)) or "?"
    return f"{p.agent_type} {sizes}, batch {p.batch_size}, {p.n_envs} envs"


def run_duration(shape: RunShape, gpu: str, gpu_count: int, profiles: Iterable[Profile], *,
                 bring_up_h: float, now: float | None = None) -> Duration:
    """How long ``shape`` runs on a machine with ``gpu_count`` x ``gpu`` (0: a CPU machine),
    from the nearest profile (see the module docstring)."""
    now = time.time() if now is None else now
    profiles = list(profiles)
    steps = shape.env_steps
    cpu = nearest(profiles, shape, "cpu")
    val = cpu.val_overhead if cpu is not None else DEFAULT_VAL_OVERHEAD
    if gpu_count > 0 and gpu:
        p = nearest(profiles, shape, "cuda", gpu)
        if p is not None:
            exact = _distance(p, shape) == 0
            sps, val = p.steps_per_s, p.val_overhead
            basis, pm = ("measured" if exact else "nearest"), (0.25 if exact else 0.5)
            text = (f"measured on {p.device_name} {_when(p, now)}"
                    + ("" if exact else f" ({_config(p)})"))
        else:
            sps, basis, pm = gpu_guess_steps_per_s(shape), "gpu-guess", GPU_GUESS_PM
            text = (f"guess: no {gpu} profile; launch-bound GPU model "
                    f"({GPU_UPDATE_S * 1e3:g} ms/update, {GPU_STEP_S * 1e3:g} ms/step)")
    elif cpu is not None:
        exact = _distance(cpu, shape) == 0
        sps = cpu.steps_per_s
        basis = "cpu-other" if exact else "nearest"
        pm = CPU_OTHER_PM if exact else CPU_OTHER_PM + 0.25
        text = (f"measured on {cpu.device_name} {_when(cpu, now)}"
                + ("" if exact else f" ({_config(cpu)})") + "; another CPU")
    else:
        return Duration(None, None, bring_up_h, steps, None, "none",
                        "no CPU profile (`dqlctl profile` measures one)", None)
    run_h = steps / sps * (1.0 + val) / 3600.0
    return Duration(run_h + bring_up_h, run_h, bring_up_h, steps,
                    round(sps, 1), basis, f"{text}, +-{pm:.0%}", pm)


def tune_workers(trials: int, vcpus: int) -> int:
    """Trials at once on a machine with ``vcpus``, as ``engine.tune.default_workers`` picks
    them there: one per core the process may use, at most one per trial."""
    return max(1, min(int(trials), int(vcpus) if vcpus and vcpus > 0 else 1))


def phase_duration(shape: RunShape, phase: str, gpu: str, gpu_count: int, vcpus: int,
                   profiles: Iterable[Profile], *, bring_up_h: float,
                   now: float | None = None) -> Duration:
    """How long ``phase`` (train | tune | all) of ``shape`` runs on a machine with ``vcpus``
    and ``gpu_count`` x ``gpu``: the formulas of the module docstring (bring-up once)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    profiles = list(profiles)
    if phase == "train" or (phase == "all" and shape.trials <= 0):
        d = run_duration(shape, gpu, gpu_count, profiles, bring_up_h=bring_up_h, now=now)
        return d if phase == "train" else dataclasses.replace(d, phase="all",
                                                              train_hours=d.run_hours)
    if shape.trials <= 0 or shape.trial_episodes <= 0:
        raise ValueError("the run has no tuning phase (trials and trial episodes must be >= 1)")
    one = run_duration(shape.trial(), "", 0, profiles, bring_up_h=0.0, now=now)
    workers = tune_workers(shape.trials, vcpus)
    waves = math.ceil(shape.trials / workers)
    tune_steps = shape.trials * one.env_steps
    if one.run_hours is None or one.plus_minus is None:
        return Duration(None, None, bring_up_h, tune_steps, None, "none", one.provenance, None,
                        phase=phase, workers=workers, waves=waves)
    tune_h = waves * one.run_hours
    pm = one.plus_minus + (TUNE_SMT_PM if workers > max(1, vcpus // 2) else 0.0)
    tune_text = f"tune trials: {one.provenance.rsplit(', +-', 1)[0]}, +-{pm:.0%}"
    if phase == "tune":
        return Duration(tune_h + bring_up_h, tune_h, bring_up_h, tune_steps, one.steps_per_s,
                        one.basis, tune_text, pm, phase="tune", tune_hours=tune_h,
                        workers=workers, waves=waves)
    train = run_duration(shape, gpu, gpu_count, profiles, bring_up_h=bring_up_h, now=now)
    if train.run_hours is None or train.plus_minus is None:
        return dataclasses.replace(train, phase="all", tune_hours=tune_h, workers=workers,
                                   waves=waves)
    run_h = tune_h + train.run_hours
    return Duration(run_h + bring_up_h, run_h, bring_up_h, tune_steps + train.env_steps,
                    train.steps_per_s, train.basis,
                    f"{tune_text}; train: {train.provenance}", max(pm, train.plus_minus),
                    phase="all", tune_hours=tune_h, train_hours=train.run_hours,
                    workers=workers, waves=waves)
