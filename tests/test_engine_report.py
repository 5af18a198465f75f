"""Outputs of an evaluated run, the report rebuilt from them alone, and compare."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from engine import report
from engine.compare import compare_experiments, format_table
from engine.data import MarketData
from engine.events import EventWriter
from engine.portfolio import position_returns

COST, SLIP = 1e-4, 2e-4


def _market(n: int = 160, seed: int = 3) -> MarketData:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0.001, 0.01, n)))
    ts = (np.datetime64("2021-01-04") + np.arange(n) * np.timedelta64(1, "D")).astype(
        "datetime64[ns]")
    return MarketData(timestamps=ts, open=close, high=close * 1.01, low=close * 0.99,
                      close=close, volume=np.ones(n), source="/x/synthetic.csv")


def _run(tmp: Path, name: str, flip: bool = False, build: bool = True) -> dict:
    md = _market()
    test, val = slice(120, 160), slice(90, 120)
    pos = np.zeros(159)
    pos[120:] = np.where(np.arange(39) % 10 < 5, 1.0, -1.0 if flip else 0.0)
    net = position_returns(md.close, pos, COST, SLIP)  # evaluate_policy's shape: stop - 1
    out = tmp / name
    with EventWriter(out / "events.jsonl") as ev:
        ev.emit("run_started", experiment=name, command="full-workflow", agent_type="dql",
                episodes=3, data_file="synthetic.csv", device="cpu", seed=0, pid=1)
        for e in range(1, 4):
            ev.emit("episode", episode=e, episodes=3, reward=0.1 * e, loss=1.0 / e,
                    epsilon=1.0 - 0.3 * e, val_sharpe=None, steps_per_s=1.0, env_steps=e)
        ev.emit("trial", trial=1, trials=1, params={"gamma": 0.9}, score=0.5)
    (out / "train_metrics.json").write_text(json.dumps({"episodes": 3, "train": {"sharpe": 1}}))
    vpos = np.ones(29)
    vnet = position_returns(md.close[90:120], vpos, COST, SLIP)
    return report.write_outputs(out, md, test, pos, net, transaction_cost=COST, slippage=SLIP,
                                config={"agent_type": "dql", "gamma": 0.99},
                                validation=(val, vpos, vnet), n_random=2, build=build)


def test_write_outputs_files_and_consistency(tmp_path: Path) -> None:
    res = _run(tmp_path, "exp_a")
    out = tmp_path / "exp_a"
    for f in ("test_metrics.json", "test_metrics.csv", "val_metrics.json",
              "strategy_comparison.csv", "test_series.csv", "config.json", "report.html",
              "plots/equity_curve.png", "plots/drawdown.png", "plots/positions.png",
              "plots/training_curves.png", "plots/tuning.png"):
        assert (out / f).is_file(), f
    test = json.loads((out / "test_metrics.json").read_text())  # strict JSON: no NaN
    assert test["split"] == "test" and test["start"] == "2021-05-04" and test["n_bars"] == 39
    assert test["data_file"] == "synthetic.csv"
    assert res["bars_per_year"] == pytest.approx(365.2425, rel=1e-3)
    with open(out / "strategy_comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    names = [r["strategy"] for r in rows]
    assert names == ["agent", "buy_and_hold", "sell_and_hold", "ma_crossover", "rsi",
                     "bollinger", "random"]
    assert float(rows[0]["total_return"]) == pytest.approx(test["total_return"])
    # buy-and-hold over the split, from the same cost model, by hand
    md = _market()
    bh = math.exp(math.log(md.close[159] / md.close[120]) - COST - SLIP) - 1
    assert float(rows[1]["total_return"]) == pytest.approx(bh)
    series = report.read_series(out / "test_series.csv")
    assert len(series["close"]) == 40 and np.isnan(series["agent_return"][-1])
    val = json.loads((out / "val_metrics.json").read_text())
    assert val["split"] == "validation" and val["n_bars"] == 29


def test_report_rebuilds_from_files_alone(tmp_path: Path) -> None:
    _run(tmp_path, "exp_b", build=False)
    out = tmp_path / "exp_b"
    assert not (out / "report.html").exists() and not (out / "plots").exists()
    path = report.build_report(out)
    doc = path.read_text()
    assert doc.count("data:image/png;base64,") == 5
    assert "buy-and-hold by" in doc and "pp on the test split" in doc
    assert "http" not in doc.replace("http-equiv", "")  # self-contained: nothing fetched
    assert "exp_b" in doc and "gamma" in doc and "train.sharpe" in doc
    assert (out / "plots" / "equity_curve.png").stat().st_size > 10_000


def test_build_report_needs_an_evaluation(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="strategy_comparison.csv"):
        report.build_report(tmp_path)


def test_verdict_and_format() -> None:
    rows = [{"strategy": "agent", "label": "DQL agent", "total_return": 0.10,
             "sharpe_ratio": 1.5, "n_trades": 3},
            {"strategy": "buy_and_hold", "label": "Buy & hold", "total_return": 0.04,
             "sharpe_ratio": 0.5, "n_trades": 1}]
    text, cls = report.verdict(rows)
    assert cls == "good" and "beat buy-and-hold by 6.00 pp" in text and "Best of 2" in text
    rows[0]["total_return"] = -0.01
    rows[0]["sharpe_ratio"] = None
    text, cls = report.verdict(rows)
    assert cls == "bad" and "trailed buy-and-hold by 5.00 pp" in text and "Rank 2 of 2" in text
    assert report.fmt("profit_factor", None, {"n_trades": 2}) == "&infin;"
    assert report.fmt("sharpe_ratio", None) == "n/a"
    assert report.fmt("max_drawdown", 0.1234) == "12.34%"


def test_compare_experiments(tmp_path: Path) -> None:
    _run(tmp_path, "exp_c", build=False)
    _run(tmp_path, "exp_d", flip=True, build=False)
    table = compare_experiments(tmp_path, ["exp_c", "exp_d"], out_csv=tmp_path / "cmp.csv")
    assert [r["experiment"] for r in table] == ["exp_c", "exp_d"]
    assert table[0]["sharpe_ratio"] == json.loads(
        (tmp_path / "exp_c" / "test_metrics.json").read_text())["sharpe_ratio"]
    with open(tmp_path / "exp_c" / "strategy_comparison.csv") as fh:
        bh = next(r for r in csv.DictReader(fh) if r["strategy"] == "buy_and_hold")
    assert table[0]["buy_and_hold_total_return"] == pytest.approx(float(bh["total_return"]))
    assert table[0]["excess_vs_buy_and_hold_pp"] == pytest.approx(
        100.0 * (table[0]["total_return"] - float(bh["total_return"])))
    with open(tmp_path / "cmp.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    text = format_table(table)
    assert "exp_c" in text and "exp_d" in text
    with pytest.raises(FileNotFoundError, match="exp_zz"):
        compare_experiments(tmp_path, ["exp_c", "exp_zz"])
