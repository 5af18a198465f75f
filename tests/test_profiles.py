"""Throughput profiles and cost per run (issue 17, the CPU half).

The arithmetic is checked from profiles stored as data here (never from timing): env steps =
episodes x ceil(training bars / n_envs) x n_envs; duration = env steps / steps/s x (1 +
validation) + bring-up; cost = duration x $/h. A CPU offer wins when the batch is small (a GPU
cannot speed the run up enough to pay for itself); one test runs the real profiler for about a
second and checks only that its record is well formed and positive.
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
from dqlctl.profiles import ShapeError, record_from_events, run_estimate, run_shape
from dqlctl.render import fmt_hours
from providers.prices.catalog import PriceRow, PriceSet, all_rows, load_catalog
from providers.prices.estimate import RESTART_OVERHEAD_H, PriceRequest, quote
from providers.prices.profiles import (
    Profile,
    RunShape,
    gpu_guess_steps_per_s,
    load_profiles,
    run_duration,
    save_profile,
    shipped,
    store_path,
)

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_790_000_000.0          # 2026-09-21
WHEN = "2026-09-20T00:00:00Z"


def profile(device: str = "cpu", name: str = "Test CPU", batch: int = 64, n_envs: int = 8,
            sps: float = 2000.0, agent: str = "custom", sizes: tuple[int, ...] = (256, 128, 64),
            val: float = 0.1, when: str = WHEN) -> dict[str, Any]:
    return {"agent_type": agent, "hidden_sizes": list(sizes), "batch_size": batch,
            "n_envs": n_envs, "device": device, "device_name": name, "steps_per_s": sps,
            "updates_per_s": sps * 16 / batch, "val_overhead": val, "measured_at": when}


def row(itype: str, gpu: str, count: int, on_demand: float, spot: float | None,
        provider: str = "aws", region: str = "us-east-1") -> PriceRow:
    return PriceRow(provider=provider, region=region, instance_type=itype, gpu=gpu,
                    gpu_count=count, vcpus=4, memory_gib=16.0, on_demand=on_demand, spot=spot)


PRICES = PriceSet(rows=[row("g4dn.xlarge", "T4", 1, 0.526, 0.2),
                        row("c7i.large", "", 0, 0.09, None),
                        row("m7i.large", "", 0, 0.10, 0.04)])
SHAPE = RunShape(train_bars=1482, episodes=100, agent_type="custom",
                 hidden_sizes=(256, 128, 64), batch_size=64, n_envs=8)


def test_env_steps_are_whole_vectorised_steps() -> None:
    assert SHAPE.env_steps == 100 * math.ceil(1482 / 8) * 8 == 148_800
    assert RunShape(10, 3, "dql", (8,), 32, 4).env_steps == 3 * 3 * 4


def test_duration_and_run_cost_follow_from_the_profile() -> None:
    profiles = [Profile.from_dict(profile(sps=2000.0, val=0.1))]
    q = quote(PriceRequest(spot=False, run=SHAPE), prices=PRICES, profiles=profiles, now=NOW)
    by_type = {o.instance_type: o for o in q.offers}
    cpu = by_type["c7i.large"]
    run_h = 148_800 / 2000.0 * 1.1 / 3600
    hours = run_h + RESTART_OVERHEAD_H
    d = cpu.extra["duration"]
    assert d["env_steps"] == 148_800 and d["steps_per_s"] == 2000.0
    assert d["run_hours"] == pytest.approx(run_h) and d["hours"] == pytest.approx(hours)
    assert d["basis"] == "cpu-other" and "measured on Test CPU" in d["provenance"]
    assert cpu.extra["estimate"]["hours"] == pytest.approx(hours)
    assert cpu.extra["estimate"]["total_usd"] == pytest.approx(hours * 0.09, abs=1e-6)
    # ranked by the cost of the run
    totals = [o.extra["estimate"]["total_usd"] for o in q.offers]
    assert totals == sorted(totals)


def test_a_gpu_without_a_profile_is_a_guess_said_as_such() -> None:
    profiles = [Profile.from_dict(profile())]
    d = run_duration(SHAPE, "T4", 1, profiles, bring_up_h=0.1, now=NOW)
    assert d.basis == "gpu-guess" and d.provenance.startswith("guess: no T4 profile")
    assert d.steps_per_s == pytest.approx(gpu_guess_steps_per_s(SHAPE), rel=1e-3)
    assert d.plus_minus == pytest.approx(0.6)
    # a profile measured on that GPU model is used as measured
    t4 = Profile.from_dict(profile(device="cuda", name="Tesla T4", sps=9000.0))
    d = run_duration(SHAPE, "T4", 1, [*profiles, t4], bring_up_h=0.1, now=NOW)
    assert d.basis == "measured" and d.steps_per_s == 9000.0
    assert d.provenance == "measured on Tesla T4 38h ago, +-25%"
    # ... and not for another GPU
    assert run_duration(SHAPE, "A10G", 1, [t4], bring_up_h=0.1, now=NOW).basis == "gpu-guess"
    # no CPU profile at all: no duration, never a made-up one
    d = run_duration(SHAPE, "", 0, [t4], bring_up_h=0.1, now=NOW)
    assert d.hours is None and d.basis == "none"


def test_a_cpu_offer_wins_when_the_batch_is_small_and_a_gpu_when_it_is_large() -> None:
    """A GPU barely faster than the CPU at batch 64 costs more per run; at a large batch it is
    many times faster and wins."""
    profiles = [Profile.from_dict(p) for p in (
        profile(batch=64, sps=2000.0), profile(device="cuda", name="Tesla T4", batch=64,
                                               sps=3000.0),
        profile(batch=4096, n_envs=1024, sps=1500.0),
        profile(device="cuda", name="Tesla T4", batch=4096, n_envs=1024, sps=150_000.0))]
    small = quote(PriceRequest(spot=True, run=SHAPE), prices=PRICES, profiles=profiles,
                  now=NOW).offers
    assert small[0].gpu_count == 0
    big_shape = RunShape(train_bars=1482, episodes=2000, agent_type="custom",
                         hidden_sizes=(256, 128, 64), batch_size=4096, n_envs=1024)
    big = quote(PriceRequest(spot=True, run=big_shape), prices=PRICES, profiles=profiles,
                now=NOW).offers
    assert big[0].instance_type == "g4dn.xlarge"


def test_cpu_rows_without_a_spot_price_are_priced_at_on_demand() -> None:
    offers = {o.instance_type: o for o in quote(PriceRequest(spot=True, hours=2.0),
                                                prices=PRICES, now=NOW).offers}
    assert offers["c7i.large"].price_per_hour == 0.09
    assert offers["c7i.large"].extra["priced_at"] == "on-demand (spot price unknown)"
    assert offers["m7i.large"].price_per_hour == 0.04           # its spot price is known
    assert offers["g4dn.xlarge"].extra["priced_at"] == "spot"


def test_the_gpu_filter_and_gpu_none() -> None:
    gpu = quote(PriceRequest(gpu="T4", hours=1.0), prices=PRICES, now=NOW).offers
    assert [o.instance_type for o in gpu] == ["g4dn.xlarge"]
    cpu = quote(PriceRequest(gpu="none", hours=1.0), prices=PRICES, now=NOW).offers
    assert {o.instance_type for o in cpu} == {"c7i.large", "m7i.large"}


def test_the_cpu_catalog_rows() -> None:
    rows = all_rows()
    cpu = [r for r in rows if r.gpu_count == 0]
    assert len(rows) == len(load_catalog()) + len(cpu)          # the GPU catalog unchanged
    assert {r.provider for r in cpu} == {"aws", "azure", "gcp"}
    for r in cpu:
        assert r.gpu == "" and r.on_demand and r.on_demand > 0 and r.spot is None
        assert r.source.startswith("hand-entered from https://") and "2025-11" in r.source
    assert not any(r.gpu_count == 0 for r in load_catalog())


def test_profile_store_newest_wins_and_bad_records_are_skipped(tmp_path: Path) -> None:
    base = shipped()
    assert base and all(p.steps_per_s > 0 for p in base)
    key_rec = {**base[0].to_dict(), "steps_per_s": 1.0, "measured_at": "2099-01-01T00:00:00Z"}
    save_profile(tmp_path, key_rec, where="test")
    save_profile(tmp_path, profile(name="Other CPU"))
    store_path(tmp_path).write_text(json.dumps({"schema": 1, "profiles": [
        *json.loads(store_path(tmp_path).read_text())["profiles"],
        {"agent_type": "dql"}, {**profile(), "steps_per_s": -3}]}))
    loaded = {p.key: p for p in load_profiles(tmp_path)}
    assert loaded[base[0].key].steps_per_s == 1.0 and loaded[base[0].key].where == "test"
    assert any(p.device_name == "Other CPU" for p in loaded.values())
    assert len(loaded) == len(base) + 1
    store_path(tmp_path).write_text("not json")
    assert len(load_profiles(tmp_path)) == len(base)            # unreadable: ignored
    with pytest.raises(ValueError):
        save_profile(tmp_path, {"agent_type": "dql"})


def test_a_runs_throughput_event_becomes_a_profile(tmp_path: Path) -> None:
    ev = {"v": 1, "ts": NOW, "event": "throughput", **profile(device="cuda", name="NVIDIA L4")}
    kept = record_from_events(tmp_path, [{"event": "episode"}, ev, {"event": "throughput"}],
                              "r-1")
    assert [p.where for p in kept] == ["run r-1"]
    assert any(p.device_name == "NVIDIA L4" for p in load_profiles(tmp_path))


def test_run_shape_counts_the_training_bars_as_the_engine_does() -> None:
    from engine.config import Config
    from engine.train import prepare_data

    shape = run_shape("test_small.csv", 7, "dql", ["--batch_size=32", "--n_envs", "4",
                                                   "--seed", "3"])
    cfg = Config(data_file="test_small.csv", agent_type="dql")
    assert shape.train_bars == prepare_data(cfg).train_steps
    assert (shape.batch_size, shape.n_envs, shape.hidden_sizes) == (32, 4, (128, 128))
    # the engine's own parser reads the flags: either spelling, and a bad value is one line
    assert run_shape("test_small.csv", 7, "dql", ["--n_envs=2", "--lr", "0.1"]).n_envs == 2
    with pytest.raises(ShapeError, match="n_envs"):
        run_shape("test_small.csv", 7, "dql", ["--n_envs", "zero"])


def test_run_estimate_for_a_plan(tmp_path: Path) -> None:
    from dqlctl.runs import LaunchRequest

    save_profile(tmp_path, profile(when="2099-01-01T00:00:00Z"))
    req = LaunchRequest(provider="aws", data="STOCKS_GOOGL.csv", episodes=100, spot=False,
                        engine_args=["--batch_size", "64"])
    out = run_estimate(tmp_path, req, {"instance_type": "c7i.large", "region": "us-east-1"},
                       now=NOW)
    hours = 148_800 / 2000.0 * 1.1 / 3600 + RESTART_OVERHEAD_H
    assert out["duration"].startswith(fmt_hours(hours) + " (148,800 env steps")
    assert out["run cost"].startswith(f"~${hours * 0.08925:,.4f} at $0.08925/h on-demand")
    req.data = "s3://bkt/x.csv"
    assert run_estimate(tmp_path, req, {"instance_type": "c7i.large",
                                        "region": "us-east-1"})["duration"].startswith("unknown")
    assert run_estimate(tmp_path, req, {}) == {}


def dqlctl(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), ctx=Context(home=home, stdout=out, stderr=err,
                                            clock=lambda: NOW))
    return code, out.getvalue(), err.getvalue()


def test_cost_ranks_offers_by_run_cost_with_durations(tmp_path: Path) -> None:
    """``dqlctl cost --gpu T4 --episodes 100 --data data/STOCKS_GOOGL.csv``: figures from the
    stored profiles; the best machine without a GPU on a line of its own."""
    save_profile(tmp_path, profile(batch=256, sps=4000.0, when="2099-01-01T00:00:00Z"))
    save_profile(tmp_path, profile(device="cuda", name="Tesla T4", batch=256, sps=4400.0))
    data = str(ROOT / "data" / "STOCKS_GOOGL.csv")
    code, out, err = dqlctl(tmp_path, "cost", "--gpu", "T4", "--episodes", "100", "--data",
                            data, "--on-demand", "--json")
    assert code == 0, err
    q = json.loads(out)
    assert q["run"]["env_steps"] == 148_800 and q["run"]["batch_size"] == 256
    offers = q["offers"]
    assert offers and all(o["gpu"] == "T4" for o in offers)
    for o in offers:
        d = o["extra"]["duration"]
        hours = 148_800 / 4400.0 * 1.1 / 3600 + RESTART_OVERHEAD_H
        assert d["basis"] == "measured" and d["hours"] == pytest.approx(hours)
        assert o["extra"]["estimate"]["total_usd"] == pytest.approx(
            hours * o["price_per_hour"], abs=1e-5)
    totals = [o["extra"]["estimate"]["total_usd"] for o in offers]
    assert totals == sorted(totals)
    cpu = q["without_gpu"]
    assert cpu["gpu_count"] == 0
    assert cpu["extra"]["duration"]["hours"] == pytest.approx(
        148_800 / 4000.0 * 1.1 / 3600 + RESTART_OVERHEAD_H)
    code, out, err = dqlctl(tmp_path, "cost", "--gpu", "T4", "--episodes", "100", "--data",
                            data, "--on-demand")
    assert code == 0, err
    assert "DURATION" in out and "RUN COST" in out
    assert "cheaper without a GPU: " in out        # 10% faster does not pay for a T4
    assert "duration (T4 offers): measured on Tesla T4" in out
    assert dqlctl(tmp_path, "cost", "--episodes", "3")[0] == 2     # --data goes with it
    code, _, err = dqlctl(tmp_path, "cost", "--episodes", "3", "--data", "nosuch.csv")
    assert code == 2 and "nosuch.csv" in err


def test_the_cost_screen_prices_a_known_request(tmp_path: Path) -> None:
    from dqlctl.runs import LaunchRequest
    from dqlctl.tui.models.cost import OFFER_COLUMNS, RUN_OFFER_COLUMNS, cost_view
    from dqlctl.tui.models.offers import form_options

    ctx = Context(home=tmp_path, clock=lambda: NOW)
    view = cost_view(ctx)
    assert view.columns == OFFER_COLUMNS and view.run is None
    gpu_col = [k for k, _, _ in OFFER_COLUMNS].index("gpu")
    assert any(r[gpu_col] == "none" for r in view.offers)          # CPU offers are listed
    view = cost_view(ctx, LaunchRequest(data="STOCKS_GOOGL.csv", episodes=100))
    assert view.columns == RUN_OFFER_COLUMNS and "148,800 env steps" in (view.run or "")
    keys = [k for k, _, _ in RUN_OFFER_COLUMNS]
    assert all(r[keys.index("duration")] != "n/a" for r in view.offers)
    assert any(n.startswith("duration (") for n in view.notes)
    bad = cost_view(ctx, LaunchRequest(data="s3://bkt/x.csv", episodes=100))
    assert bad.columns == OFFER_COLUMNS and bad.warnings[0].startswith("priced per hour")
    labels = [t for t, v in form_options("aws", "us-east-1", True).labels() if v == "c7i.large"]
    assert labels and " none " in labels[0] and "x0" not in labels[0]


def test_dqlctl_profile_measures_for_real_and_keeps_a_well_formed_record(
        tmp_path: Path) -> None:
    """The one test that runs the profiler (a fraction of a second of loop time): only the
    record's form is checked, never its rate."""
    code, out, err = dqlctl(tmp_path, "profile", "--agent-type", "dql", "--hidden-sizes", "16",
                            "--batch-size", "32", "--n-envs", "4", "--data", "test_small.csv",
                            "--device", "cpu", "--threads", "1", "--seconds", "0.3", "--json")
    assert code == 0, err
    rec = json.loads(out)
    p = Profile.from_dict(rec)
    assert p.steps_per_s > 0 and p.updates_per_s > 0 and p.val_overhead >= 0
    assert (p.agent_type, p.hidden_sizes, p.batch_size, p.n_envs, p.device, p.torch_threads) \
        == ("dql", (16,), 32, 4, "cpu", 1)
    assert p.device_name and rec["source"] == "profile" and p.where == "dqlctl profile"
    code, out, _ = dqlctl(tmp_path, "profile", "--list", "--json")
    assert code == 0 and p.to_dict() in json.loads(out)
    code, out, _ = dqlctl(tmp_path, "profile", "--list")
    assert code == 0 and out.startswith("AGENT") and "dqlctl profile" in out
    code, _, err = dqlctl(tmp_path, "profile", "--seconds", "0")
    assert code == 2 and "--seconds" in err
    code, _, err = dqlctl(tmp_path, "profile", "--data", "nosuch.csv", "--seconds", "1")
    assert code == 2 and "nosuch.csv" in err


def test_cost_per_run_takes_the_engine_settings(tmp_path: Path) -> None:
    """--agent-type, --batch-size and --n-envs shape the run; the nearest profile prices it."""
    save_profile(tmp_path, profile(agent="dql", sizes=(128, 128), batch=32, n_envs=16,
                                   sps=1600.0, val=0.0, when="2099-01-01T00:00:00Z"))
    code, out, err = dqlctl(tmp_path, "cost", "--gpu", "none", "--provider", "aws", "--region",
                            "us-east-1", "--episodes", "10", "--data", "test_small.csv",
                            "--agent-type", "dql", "--batch-size", "32", "--n-envs", "16",
                            "--json", "--limit", "1")
    assert code == 0, err
    q = json.loads(out)
    steps = 10 * math.ceil(q["run"]["train_bars"] / 16) * 16
    assert (q["run"]["agent_type"], q["run"]["batch_size"], q["run"]["n_envs"],
            q["run"]["env_steps"]) == ("dql", 32, 16, steps)
    best = q["offers"][0]
    assert best["gpu_count"] == 0 and best["instance_type"] == "c7i.large"
    assert best["extra"]["duration"]["hours"] == pytest.approx(steps / 1600.0 / 3600
                                                               + RESTART_OVERHEAD_H)
    assert q["without_gpu"] is None                    # asked for CPU machines already
