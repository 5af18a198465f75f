"""Cost per phase of a run that tunes first (issue 17, ``--phase``).

The tuning phase is N independent trials run at once on the offer's vCPUs (workers = min(trials,
vCPUs), waves = ceil(trials / workers), one trial's duration from the nearest CPU profile); the
training phase is the one sequential run; a machine's bring-up is counted once per machine, so a
split (tune on one machine, train on another) pays two. Figures come from profiles stored as
data here, never from timing; the prices are a small made-up catalog where the test needs its
own numbers.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

import dqlctl.cli as cli
from dqlctl.context import Context
from dqlctl.profiles import launch_shape, run_estimate
from providers.prices.catalog import PriceRow, PriceSet
from providers.prices.estimate import (
    RESTART_OVERHEAD_H,
    PriceError,
    PriceRequest,
    phase_plan,
    quote,
)
from providers.prices.profiles import (
    TUNE_SMT_PM,
    Profile,
    RunShape,
    load_profiles,
    phase_duration,
    run_duration,
    save_profile,
    tune_workers,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "data" / "STOCKS_GOOGL.csv")
NOW = 1_790_000_000.0
WHEN = "2099-01-01T00:00:00Z"       # newer than the shipped profiles: these win
BU = RESTART_OVERHEAD_H


def profile(device: str = "cpu", name: str = "Test CPU", sps: float = 400.0,
            val: float = 0.1) -> dict[str, Any]:
    return {"agent_type": "custom", "hidden_sizes": [256, 128, 64], "batch_size": 64,
            "n_envs": 8, "device": device, "device_name": name, "steps_per_s": sps,
            "updates_per_s": sps * 16 / 64, "val_overhead": val, "measured_at": WHEN}


def row(itype: str, gpu: str, count: int, vcpus: int, on_demand: float,
        spot: float | None) -> PriceRow:
    return PriceRow(provider="aws", region="us-east-1", instance_type=itype, gpu=gpu,
                    gpu_count=count, vcpus=vcpus, memory_gib=32.0, on_demand=on_demand,
                    spot=spot)


# A many-core CPU machine on cheap spot, a small one whose spot price is unknown (on-demand),
# and a 4-vCPU T4 machine.
PRICES = PriceSet(rows=[row("c7a.4xlarge", "", 0, 16, 0.6, 0.2),
                        row("c7i.xlarge", "", 0, 4, 0.17, None),
                        row("g4dn.xlarge", "T4", 1, 4, 0.526, 0.2)])


def shape(trials: int = 20, trial_episodes: int = 20, episodes: int = 200) -> RunShape:
    return RunShape(train_bars=1482, episodes=episodes, agent_type="custom",
                    hidden_sizes=(256, 128, 64), batch_size=64, n_envs=8, trials=trials,
                    trial_episodes=trial_episodes)


def trial_h(s: RunShape, sps: float = 400.0, val: float = 0.1) -> float:
    """One trial's run hours, as the module docstring writes it."""
    return s.trial_episodes * math.ceil(1482 / 8) * 8 / sps * (1 + val) / 3600


@pytest.fixture()
def fast_t4(tmp_path: Path) -> list[Profile]:
    """The CPU profile and a fast T4 profile of the same configuration, stored in a temp home."""
    save_profile(tmp_path, profile())
    save_profile(tmp_path, profile(device="cuda", name="Tesla T4", sps=40_000.0))
    return load_profiles(tmp_path)


def test_workers_and_waves_follow_the_vcpus() -> None:
    assert [tune_workers(20, v) for v in (2, 4, 16, 32, 0)] == [2, 4, 16, 20, 1]
    profiles = [Profile.from_dict(profile())]
    s = shape()
    one = trial_h(s)
    for vcpus, workers, waves in ((16, 16, 2), (4, 4, 5), (32, 20, 1), (2, 2, 10)):
        d = phase_duration(s, "tune", "", 0, vcpus, profiles, bring_up_h=BU, now=NOW)
        assert (d.workers, d.waves, d.phase) == (workers, waves, "tune")
        assert d.run_hours == pytest.approx(waves * one)
        assert d.hours == pytest.approx(waves * one + BU)          # one bring-up
        assert d.env_steps == 20 * 20 * 1488
    # trials never use the GPU: a GPU machine tunes at its vCPUs' pace
    gpu = phase_duration(s, "tune", "T4", 1, 4, profiles, bring_up_h=BU, now=NOW)
    assert gpu.run_hours == pytest.approx(5 * one) and gpu.basis == "cpu-other"
    # more trials than cores (two threads a core): the +- widens
    assert gpu.plus_minus == pytest.approx(0.5 + TUNE_SMT_PM)
    wide = phase_duration(shape(trials=4), "tune", "", 0, 16, profiles, bring_up_h=BU, now=NOW)
    assert wide.plus_minus == pytest.approx(0.5) and wide.waves == 1


def test_all_is_tune_plus_train_with_one_bring_up_and_train_is_as_before() -> None:
    profiles = [Profile.from_dict(profile())]
    s = shape()
    train = run_duration(s, "", 0, profiles, bring_up_h=BU, now=NOW)
    assert phase_duration(s, "train", "", 0, 16, profiles, bring_up_h=BU, now=NOW) == train
    both = phase_duration(s, "all", "", 0, 16, profiles, bring_up_h=BU, now=NOW)
    assert both.tune_hours == pytest.approx(2 * trial_h(s))
    assert both.train_hours == pytest.approx(train.run_hours)
    assert both.hours == pytest.approx(2 * trial_h(s) + train.run_hours + BU)
    assert both.provenance.startswith("tune trials: measured on Test CPU")
    assert "; train: measured on Test CPU" in both.provenance
    # a run that does not tune: all is its training
    plain = phase_duration(shape(trials=0), "all", "", 0, 16, profiles, bring_up_h=BU, now=NOW)
    assert plain.hours == pytest.approx(train.hours) and plain.tune_hours is None
    with pytest.raises(ValueError, match="no tuning phase"):
        phase_duration(shape(trials=0), "tune", "", 0, 16, profiles, bring_up_h=BU, now=NOW)
    with pytest.raises(PriceError, match="no tuning trials"):
        quote(PriceRequest(run=shape(trials=0), phase="tune"), prices=PRICES, now=NOW)
    with pytest.raises(PriceError, match="phase must be"):
        quote(PriceRequest(run=s, phase="eval"), prices=PRICES, now=NOW)


def test_cpu_spot_wins_the_tuning_a_fast_gpu_the_training(fast_t4: list[Profile]) -> None:
    """Default tuning (20 x 20): the 16-vCPU spot machine tunes cheapest; the T4, with its
    stored profile 100x the CPU's, trains cheapest; the split pays only when tuning is long."""
    s = shape()
    kw: dict[str, Any] = {"prices": PRICES, "profiles": fast_t4, "now": NOW}

    def best(phase: str, run: RunShape = s) -> Any:
        return quote(PriceRequest(run=run, phase=phase), **kw).offers[0]

    tune, train = best("tune"), best("train")
    assert tune.instance_type == "c7a.4xlarge" and tune.extra["duration"]["workers"] == 16
    assert tune.extra["estimate"]["total_usd"] == pytest.approx((2 * trial_h(s) + BU) * 0.2,
                                                                abs=1e-6)
    assert train.instance_type == "g4dn.xlarge"
    assert train.extra["duration"]["basis"] == "measured"
    # default tuning: the T4 does all of it cheapest, the split's second bring-up does not pay
    plan = phase_plan([PriceRequest(run=s)], **kw)
    assert plan.single.instance_type == "g4dn.xlarge" and not plan.cheaper
    assert plan.split_usd == pytest.approx(tune.extra["estimate"]["total_usd"]
                                           + train.extra["estimate"]["total_usd"], abs=1e-6)
    # 80 trials: 20 waves on the T4's 4 vCPUs against 5 on the CPU machine: the split pays
    long = shape(trials=80)
    plan = phase_plan([PriceRequest(run=long)], **kw)
    assert (plan.tune.instance_type, plan.train.instance_type) == ("c7a.4xlarge", "g4dn.xlarge")
    assert plan.cheaper and plan.split_usd < plan.single.extra["estimate"]["total_usd"]
    d = plan.to_dict()
    assert set(d) == {"single", "tune", "train", "split"}
    assert d["split"]["cheaper"] is True and d["split"]["saving_usd"] == pytest.approx(
        plan.single.extra["estimate"]["total_usd"] - plan.split_usd, abs=1e-6)
    assert d["split"]["hours"] == pytest.approx(plan.tune.extra["duration"]["hours"]
                                                + plan.train.extra["duration"]["hours"])


def test_launch_dry_run_rows_show_both_phases_and_the_split_when_cheaper(
        tmp_path: Path, fast_t4: list[Profile]) -> None:
    from dqlctl.runs import LaunchRequest

    plan = {"instance_type": "g4dn.xlarge", "region": "us-east-1"}
    req = LaunchRequest(provider="aws", data="STOCKS_GOOGL.csv", episodes=200,
                        engine_args=["--batch_size", "64", "--n_envs", "8"])
    assert launch_shape(req).trials == 0                 # launch skips tuning without --tune
    out = run_estimate(tmp_path, req, plan, prices=PRICES, now=NOW)
    assert "tune" not in out["duration"] and "split" not in out
    req.tune = True
    assert (launch_shape(req).trials, launch_shape(req).trial_episodes) == (20, 20)
    out = run_estimate(tmp_path, req, plan, prices=PRICES, now=NOW)
    assert " tune " in out["duration"] and "20 trials x 20 episodes, 4 at once, 5 waves" \
        in out["duration"] and "+ train " in out["duration"]
    assert "split" not in out                            # default tuning: not cheaper
    req.engine_args += ["--n_iter", "80"]
    out = run_estimate(tmp_path, req, plan, prices=PRICES, now=NOW)
    assert out["split"].startswith("tune on aws us-east-1 c7a.4xlarge (")
    assert "train here" in out["split"] and "less (two bring-ups counted)" in out["split"]
    # the engine's own flags: --skip_tuning, a grid search capped by the grid's size
    req.engine_args += ["--skip_tuning"]
    assert launch_shape(req).trials == 0
    req.engine_args = ["--search_method", "grid", "--n_iter", "1000"]
    assert 0 < launch_shape(req).trials < 1000
    # launch --command tune: the trials alone, no training phase and no split
    tuner = LaunchRequest(provider="aws", data="STOCKS_GOOGL.csv", command="tune",
                          engine_args=["--batch_size", "64", "--n_envs", "8"])
    out = run_estimate(tmp_path, tuner, plan, prices=PRICES, now=NOW)
    assert "20 trials x 20 episodes, 4 at once, 5 waves) + 6 min bring-up" in out["duration"]
    assert "train" not in out["duration"].split(";")[0] and "split" not in out


def dqlctl(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), ctx=Context(home=home, stdout=out, stderr=err,
                                            clock=lambda: NOW))
    return code, out.getvalue(), err.getvalue()


def test_cost_phase_all_json_and_the_split_line(tmp_path: Path) -> None:
    save_profile(tmp_path, profile())
    save_profile(tmp_path, profile(device="cuda", name="Tesla T4", sps=40_000.0))
    base = ("cost", "--provider", "aws", "--region", "us-east-1", "--episodes", "200", "--data",
            DATA, "--batch-size", "64", "--n-envs", "8")
    code, out, err = dqlctl(tmp_path, *base, "--phase", "all", "--gpu", "T4", "--json")
    assert code == 0, err
    q = json.loads(out)
    assert q["phase"] == "all" and (q["run"]["trials"], q["run"]["trial_episodes"]) == (20, 20)
    assert set(q["phases"]) == {"single", "tune", "train", "split"}
    assert set(q["phases"]["split"]) == {"usd", "hours", "cheaper", "saving_usd"}
    for o in q["offers"]:
        d = o["extra"]["duration"]
        assert d["phase"] == "all" and d["workers"] == min(20, o["vcpus"])
        assert d["waves"] == math.ceil(20 / d["workers"])
        assert d["hours"] == pytest.approx(d["tune_hours"] + d["train_hours"] + BU)
    # the CPU machines compete for each phase even with --gpu T4
    assert q["phases"]["tune"]["gpu_count"] == 0 or q["phases"]["tune"]["vcpus"] >= 4
    # the text: the split line only when it is cheaper. On-demand (the CPU machines' spot
    # prices are not in the catalog), a long training: one 1-episode trial does not pay for a
    # second bring-up; 400 trials on a CPU machine, the training on a T4, do.
    for trials, episodes in (("1", "1"), ("400", "20")):
        args = ("cost", "--provider", "aws", "--region", "us-east-1", "--episodes", "2000",
                "--data", DATA, "--batch-size", "64", "--n-envs", "8", "--on-demand",
                "--trials", trials, "--trial-episodes", episodes)
        code, out, err = dqlctl(tmp_path, *args, "--json")
        assert code == 0, err
        phases = json.loads(out)["phases"]
        cheaper = phases["split"]["cheaper"]
        code, text, err = dqlctl(tmp_path, *args)
        assert code == 0, err
        assert f"phase all: {trials} tuning trials x {episodes} episodes" in text
        assert "one machine for all of it: " in text and "tune phase alone: " in text
        assert ("\nsplit: tune on " in text) is cheaper
        assert ("\nno split: " in text) is not cheaper
        assert cheaper is (trials == "400")
    assert phases["tune"]["gpu_count"] == 0 and phases["train"]["gpu"] == "T4"
    assert phases["split"]["usd"] < phases["single"]["extra"]["estimate"]["total_usd"]
    # no phase named: today's output, no phase lines
    code, text, _ = dqlctl(tmp_path, *base)
    assert code == 0 and "TRIALS AT ONCE" not in text and "split" not in text
    assert text.startswith("all instance types, spot, run: 200 episodes x 1,482 training")


def test_cost_phase_tune_and_train_rank_their_phase(tmp_path: Path) -> None:
    save_profile(tmp_path, profile())
    base = ("cost", "--provider", "aws", "--region", "us-east-1", "--data", DATA,
            "--batch-size", "64", "--n-envs", "8", "--gpu", "none")
    code, out, err = dqlctl(tmp_path, *base, "--phase", "tune", "--trials", "40",
                            "--trial-episodes", "10", "--json")
    assert code == 0, err
    q = json.loads(out)
    assert q["phase"] == "tune" and q["phases"] is None and q["run"]["episodes"] == 0
    per_trial = 10 * 1488 / 400.0 * 1.1 / 3600
    for o in q["offers"]:
        d = o["extra"]["duration"]
        assert d["hours"] == pytest.approx(math.ceil(40 / min(40, o["vcpus"])) * per_trial + BU)
    totals = [o["extra"]["estimate"]["total_usd"] for o in q["offers"]]
    assert totals == sorted(totals)
    code, text, _ = dqlctl(tmp_path, *base, "--phase", "tune", "--trials", "40")
    assert code == 0 and "TRIALS AT ONCE x WAVES" in text and "phase tune: 40 tuning" in text
    code, out, err = dqlctl(tmp_path, *base, "--phase", "train", "--episodes", "50", "--json")
    assert code == 0, err
    q = json.loads(out)
    assert q["phase"] == "train" and q["run"]["env_steps"] == 50 * 1488
    assert all(o["extra"]["duration"]["phase"] == "train" for o in q["offers"])


@pytest.mark.parametrize("argv, words", [
    (("--phase", "tune", "--episodes", "3"), "--phase tune needs --data"),
    (("--phase", "all", "--data", DATA), "--phase all needs --episodes and --data"),
    (("--trials", "0", "--episodes", "3", "--data", DATA), "--trials must be at least 1"),
    (("--trial-episodes", "-1", "--episodes", "3", "--data", DATA),
     "--trial-episodes must be at least 1"),
])
def test_bad_phase_input_is_one_line_and_exit_2(tmp_path: Path, argv: tuple[str, ...],
                                                words: str) -> None:
    code, out, err = dqlctl(tmp_path, "cost", *argv)
    assert code == 2 and out == ""
    assert words in err and len(err.strip().splitlines()) == 1


def test_the_launch_form_can_tune_and_the_cost_screen_prices_both_phases(
        tmp_path: Path) -> None:
    from dqlctl.tui.models.cost import cost_view
    from dqlctl.tui.models.launch import COMMAND_CHOICES, TUNED, FormValues, build_request

    assert TUNED in [v for _, v in COMMAND_CHOICES]
    req = build_request(FormValues(data="STOCKS_GOOGL.csv", command=TUNED, episodes="100"))
    assert (req.command, req.tune) == ("full-workflow", True)
    assert build_request(FormValues(data="STOCKS_GOOGL.csv")).tune is False
    view = cost_view(Context(home=tmp_path, clock=lambda: NOW), req)
    assert (view.run or "").startswith("20 tuning trials x 20 episodes on the vCPUs, then 100")
    assert any(n.split(": ", 1)[1].startswith("tune trials: ") for n in view.notes)


def test_a_gpu_the_engine_cannot_use_is_priced_at_cpu_speed_and_an_arm64_host_not_at_all(
        ) -> None:
    """An AMD GPU (Azure NVv4) gives the CUDA engine nothing: the run is priced at the speed of
    the machine's CPU and says why; an arm64 host (AWS g5g) cannot start the amd64 image, so a
    run is not priced there (listed as not shown), though the per-hour list keeps it."""
    prices = PriceSet(rows=[row("c7a.xlarge", "", 0, 4, 0.17, 0.07),
                            row("NV4as_v4", "Radeon MI25", 1, 4, 0.23, 0.03),
                            row("g5g.xlarge", "T4g", 1, 4, 0.42, 0.04)])
    profiles = [Profile.from_dict(profile(sps=400.0)),
                Profile.from_dict(profile(device="cuda", name="Tesla T4", sps=40_000.0))]
    got = quote(PriceRequest(spot=True, run=shape(trials=0, trial_episodes=0)), now=NOW,
                prices=prices, profiles=profiles)
    offers = {o.instance_type: o.extra["duration"] for o in got.offers}
    assert set(offers) == {"c7a.xlarge", "NV4as_v4"}
    assert offers["NV4as_v4"]["steps_per_s"] == offers["c7a.xlarge"]["steps_per_s"] == 400.0
    assert offers["NV4as_v4"]["provenance"].startswith("AMD GPU: the CUDA engine image does "
                                                       "not use it, on its CPU: ")
    assert [(r.instance_type, why) for r, why in got.hidden] == [
        ("g5g.xlarge", "arm64 host (Graviton): needs an arm64 engine image")]
    per_hour = quote(PriceRequest(spot=True), now=NOW, prices=prices)
    assert {o.instance_type for o in per_hour.offers} == {"c7a.xlarge", "NV4as_v4",
                                                          "g5g.xlarge"}
