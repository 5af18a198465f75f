"""The control center's side of throughput profiles: the shape of a run it is asked about
(``run_shape``: the data's training bars, episodes, the engine configuration the run would use),
measuring a profile here (``measure``, for ``dqlctl profile``), and keeping the profile every
run sends after training (``record_from_events``, from the event fold in ``runs.jobs``).

The profiles themselves and the duration arithmetic are ``providers.prices.profiles``; the
measuring is the engine's (``engine.profile``). The engine's modules load inside the functions:
importing this module is cheap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

from dqlctl.render import fmt_hours, split_text
from providers.prices.profiles import Profile, RunShape, save_profile


class ShapeError(ValueError):
    """The run's shape cannot be known here (a data file that is not local, a bad flag)."""


def count_bars(path: str) -> int:
    """Bars of a market file as the engine reads it (``engine.data.load_market_data``: rows it
    drops, such as repeated timestamps, are not counted); ShapeError when it does not load."""
    from engine.data import DataError, load_market_data

    try:
        return int(load_market_data(path).n)
    except DataError as exc:
        raise ShapeError(str(exc).splitlines()[0]) from None


TUNING_COMMANDS = ("full-workflow", "tune")


def run_shape(data: str, episodes: int, agent_type: str,
              engine_args: Sequence[str] = (), *, command: str = "train") -> RunShape:
    """The run ``launch`` would start: its training split's decision bars (as
    ``engine.train.prepare_data`` counts them) and the engine configuration (agent defaults,
    then ``engine_args``, read for the engine ``command``); ShapeError when it cannot be known
    here. A command that tunes first (``full-workflow`` without ``--skip_tuning``, ``tune``)
    has ``trials`` (``--n_iter``; a grid search: at most the grid's size) of
    ``trial_episodes`` (``--tuning_episodes``) episodes; ``tune`` trains nothing after them
    (``episodes`` is then not used)."""
    from engine.cli import UsageError, build_parser, config_from_args
    from engine.config import BadInput
    from providers.layout import DataFileNotFound, is_uri, resolve_data_path

    if episodes <= 0 and command != "tune":
        raise ShapeError(f"episodes must be a positive number, got {episodes}")
    try:
        path = resolve_data_path(data)
    except DataFileNotFound as exc:
        raise ShapeError(str(exc)) from None
    if is_uri(path):
        raise ShapeError(f"{data}: not a local file; the run's length is estimated from a "
                         "local copy (give its path)")
    try:  # the engine's own parser: its flags, spellings and --config file, exactly
        ns, _ = build_parser().parse_known_args([command, "--agent_type", agent_type,
                                                 *engine_args])
        cfg = config_from_args(ns)[0].resolved()
    except (UsageError, BadInput, OSError) as exc:
        raise ShapeError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    from engine.data import split_indices
    from engine.features import first_decision_bar

    n = count_bars(path)
    try:
        train, _, _ = split_indices(n, cfg.train_frac, cfg.val_frac)
    except ValueError as exc:
        raise ShapeError(f"{data}: {exc}") from None
    start = first_decision_bar(cfg)
    bars = int(train.stop) - 1 - start
    if bars <= 0:
        raise ShapeError(f"{data}: {n} bars leave no training bars after the warm-up")
    trials = 0
    if command == "tune" or (command == "full-workflow" and not cfg.skip_tuning):
        trials = int(cfg.n_iter)
        if cfg.search_method == "grid":
            from engine.tune import search_space

            trials = min(trials, math.prod(len(v) for v in search_space("grid").values()))
    return RunShape(train_bars=bars, episodes=0 if command == "tune" else episodes,
                    agent_type=cfg.agent_type, hidden_sizes=tuple(cfg.hidden_sizes or ()),
                    batch_size=int(cfg.batch_size), n_envs=int(cfg.n_envs),
                    replay_ratio=float(cfg.replay_ratio), data=os.path.basename(path),
                    trials=trials, trial_episodes=int(cfg.tuning_episodes) if trials else 0)


def launch_shape(req: Any) -> RunShape:
    """:func:`run_shape` of a launch request (``runs.LaunchRequest``): its engine command, and
    the tuning stage only with ``--tune`` (``launch`` adds ``--skip_tuning`` otherwise)."""
    args = list(req.engine_args)
    if req.command == "full-workflow" and not req.tune:
        args.append("--skip_tuning")
    return run_shape(req.data, req.episodes, req.agent_type, args, command=req.command)


def record_from_events(home: str | os.PathLike[str], events: Iterable[dict[str, Any]],
                       run_id: str) -> list[Profile]:
    """Keep the profile of each ``throughput`` event among a run's ``events`` (the engine sends
    one after training); a malformed one is skipped."""
    kept = []
    for ev in events:
        if ev.get("event") != "throughput":
            continue
        try:
            kept.append(save_profile(home, ev, where=f"run {run_id}"))
        except (ValueError, OSError):
            continue
    return kept


def measure(home: str | os.PathLike[str], settings: dict[str, Any],
            seconds: float = 5.0) -> Profile:
    """Measure the engine configuration ``settings`` (engine setting name -> value: agent_type,
    data_file, batch_size, n_envs, hidden_sizes, device, torch_threads ...) here, for about
    ``seconds`` (``engine.profile.measure``), and keep the profile in the home."""
    from engine.profile import measure as engine_measure

    record = engine_measure(_engine_config(settings), seconds)
    return save_profile(home, record, where="dqlctl profile")


def measure_fill(home: str | os.PathLike[str], settings: dict[str, Any], seconds: float = 5.0,
                 *, pairs: Sequence[tuple[int, int]] | None = None,
                 log: Any = None) -> list[dict[str, Any]]:
    """:func:`measure` at several (n_envs, batch) pairs (``engine.profile.fill``: the
    configuration's own and ``pairs``, default by the device), about ``seconds`` each; every
    measured pair's profile is kept in the home (``dqlctl cost --batch-size B --n-envs N``
    then finds it). The engine's records, fastest first, then the skipped pairs."""
    from engine.profile import fill

    records = fill(_engine_config(settings), seconds, pairs=pairs, log=log)
    for rec in records:
        if not rec.get("skipped"):
            save_profile(home, rec, where="dqlctl profile --fill")
    return records


def _engine_config(settings: dict[str, Any]) -> Any:
    """The engine's Config of ``settings``; ShapeError naming a bad one."""
    from engine.config import Config, ConfigError, apply_overrides

    try:
        cfg = apply_overrides(Config(), settings, source="profile flags")
        cfg.validate()
    except ConfigError as exc:
        raise ShapeError(str(exc)) from None
    return cfg


def run_estimate(home: str | os.PathLike[str], req: Any, plan: dict[str, Any], *,
                 prices: Any = None, now: float | None = None) -> dict[str, str]:
    """``duration`` and ``run cost`` of a launch request (``runs.LaunchRequest``) on the
    instance type and region its plan names (``launch --dry-run``, the TUI's launch form):
    ``providers.prices.estimate.quote`` for the run's shape; {} where the plan names no priced
    machine, and the reason in ``duration`` when the run's length cannot be known here. A run
    that tunes first (``--tune``) shows both phases, and a ``split`` line when tuning on
    another machine of the same cloud (the cheapest for the trials) and training on this one
    costs less than both here."""
    from providers.prices.estimate import PriceError, PriceRequest, quote
    from providers.prices.profiles import load_profiles

    itype, region = plan.get("instance_type"), plan.get("region")
    if not itype or not region:
        return {}
    try:
        shape = launch_shape(req)
    except ShapeError as exc:
        return {"duration": f"unknown: {str(exc).splitlines()[0]}"}
    phase = ("tune" if req.command == "tune" else "all") if shape.trials else "train"
    here = PriceRequest(provider=req.provider, instance_type=str(itype), region=str(region),
                        spot=req.spot, run=shape, phase=phase)
    try:
        if prices is None:
            from providers.prices.catalog import load_prices

            prices = load_prices(home)
        profiles = load_profiles(home)
        found = quote(here, home=home, prices=prices, now=now, profiles=profiles).offers
    except PriceError:
        return {}
    if not found:
        return {}
    offer = found[0]
    d, est = offer.extra["duration"], offer.extra["estimate"]
    if d.get("phase") in ("all", "tune") and d.get("tune_hours") is not None:
        what = (f"tune {fmt_hours(d['tune_hours'])} ({shape.trials} trials x "
                f"{shape.trial_episodes} episodes, {d['workers']} at once, {d['waves']} wave"
                f"{'s' if d['waves'] != 1 else ''})")
        if d["phase"] == "all":
            what += f" + train {fmt_hours(d['train_hours'])} ({shape.env_steps:,} env steps)"
        what += f" + {d['bring_up_h'] * 60:g} min bring-up"
        out = {"duration": f"{fmt_hours(d['hours'])}: {what}; {d['provenance']}"}
    else:
        out = {"duration": f"{fmt_hours(d['hours'])} ({d['env_steps']:,} env steps, "
                           f"{d['bring_up_h'] * 60:g} min bring-up; {d['provenance']})"}
    if est["total_usd"] is not None and d["hours"] is not None:
        out["run cost"] = (f"~${est['total_usd']:,.4f} at ${offer.price_per_hour:g}/h "
                           f"{offer.extra['priced_at']}")
        if phase == "all":
            hint = _split_hint(offer, shape, req, prices, profiles, home, now)
            if hint:
                out["split"] = hint
    return out


def _split_hint(offer: Any, shape: RunShape, req: Any, prices: Any, profiles: Any,
                home: str | os.PathLike[str], now: float | None) -> str:
    """Tuning on the cheapest machine of the same cloud for the trials, training on ``offer``
    (the planned machine): the line when that costs less than both phases there, with the two
    launches that run it (``launch --command tune`` there, then ``launch --command train
    --params-from`` that run here: ``render.split_text``); ''."""
    from providers.prices.estimate import PhasePlan, PriceRequest, cheapest

    kw: dict[str, Any] = {"home": home, "now": now, "prices": prices, "profiles": profiles}
    tune = cheapest([PriceRequest(provider=offer.provider, spot=req.spot, run=shape)], "tune",
                    **kw)
    here = PriceRequest(provider=offer.provider, instance_type=offer.instance_type,
                        region=offer.region, spot=req.spot, run=shape)
    split = PhasePlan(single=offer, tune=tune, train=cheapest([here], "train", **kw))
    return split_text(split, here=True) if split.cheaper else ""
