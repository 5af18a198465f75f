"""The test stage of a run: every market's test split, the baselines, and the honest verdict.

:func:`evaluate_markets` runs the chosen model greedily over each market's test split, writes
the files of :mod:`engine.report` (one market: in the experiment folder, as before; several: one
sub-folder per market under ``markets/``, and in the experiment folder their aggregate:
``test_metrics.json`` with the mean metrics, ``strategy_comparison.csv`` with each strategy's
mean over markets, ``markets.csv`` and the JSON's ``markets`` list with one row per market), and
adds to the test metrics what tells skill from luck (:mod:`engine.stats`), as flat keys:

- ``n_markets``, ``markets_beaten`` (test Sharpe above buy-and-hold's), ``bh_sharpe_ratio``;
- ``sharpe_vs_bh`` and ``sharpe_vs_bh_ci_low`` / ``_high`` / ``_p_le_0``: the Sharpe difference
  against buy-and-hold (mean over markets) and its 95% stationary-bootstrap interval;
- ``n_seeds``, ``seed_sharpe_mean`` / ``_std`` / ``_min`` / ``_max``: the test Sharpe ratio of
  each seed of an ensemble (one seed: its own, with std 0);
- ``val_sharpe``, ``val_test_gap``: the selected model's validation Sharpe and how much it
  exceeds the test Sharpe (selection bias shows here);
- ``deflated_sharpe``, ``n_trials``: the deflated Sharpe ratio of the validation result after
  ``n_trials`` = episodes (1 with ``--weight_average``: no episode is chosen) x validation
  folds x tuning trials; ``test_psr``: the probabilistic
  Sharpe ratio of the test result (P(true Sharpe > 0));
- ``verdict``: :func:`engine.stats.verdict_text`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from engine import stats
from engine.config import Config

MARKETS_CSV = "markets.csv"
MARKET_COLUMNS = ("market", "agent_sharpe", "bh_sharpe", "sharpe_vs_bh", "ci_low", "ci_high",
                  "agent_return", "bh_return", "agent_max_drawdown", "bh_max_drawdown",
                  "n_trades", "exposure", "beat_bh")


def evaluate_markets(out: Path, cfg: Config, data: Any, net: Any, device: str, *,
                     val_series: tuple[Any, Any] | None = None, result: Any = None,
                     tuning_trials: int = 1) -> dict[str, Any]:
    """See the module docstring. Returns ``{"test_metrics", "strategies" (name -> metrics, the
    mean over markets), "markets" (rows of markets.csv), "equity" ((market, returns) of the
    single market, else None)}``."""
    from engine import report
    from engine.metrics import mean_metrics
    from engine.train import as_markets, buy_and_hold_returns, greedy_pass, market_label

    markets = as_markets(data)
    multi = len(markets) > 1
    agent_rets, bh_rets, bpys, rows = [], [], [], []
    tests: list[dict[str, Any]] = []
    strategies: list[dict[str, Any]] = []
    for m in markets:
        tpos, tret = greedy_pass(net, m, m.test, cfg, device)
        folder = out / "markets" / market_label(m) if multi else out
        validation = None
        if not multi and val_series is not None:
            validation = (m.val, val_series[0], val_series[1])
        done = report.write_outputs(
            folder, m.md, m.test, tpos, tret, transaction_cost=cfg.transaction_cost,
            slippage=cfg.slippage, long_only=cfg.long_only, validation=validation,
            seed=cfg.seed, bars_per_year=m.bars_per_year, build=False)
        _, bh = buy_and_hold_returns(m, m.test, cfg)
        agent_rets.append(tret)
        bh_rets.append(bh)
        bpys.append(m.bars_per_year)
        tests.append(dict(done["test_metrics"]))
        strategies.append(dict(done.get("strategies") or {}))
        ci_m = stats.sharpe_diff_ci(tret, bh, m.bars_per_year, seed=cfg.seed, n_boot=1000)
        a, b = tests[-1], strategies[-1].get("buy_and_hold", {})
        rows.append({
            "market": market_label(m), "agent_sharpe": a.get("sharpe_ratio"),
            "bh_sharpe": b.get("sharpe_ratio"), "sharpe_vs_bh": ci_m["diff"],
            "ci_low": ci_m["low"], "ci_high": ci_m["high"],
            "agent_return": a.get("total_return"), "bh_return": b.get("total_return"),
            "agent_max_drawdown": a.get("max_drawdown"),
            "bh_max_drawdown": b.get("max_drawdown"), "n_trades": a.get("n_trades"),
            "exposure": a.get("exposure"),
            "beat_bh": bool(stats.sharpe(tret, m.bars_per_year) > stats.sharpe(bh, m.bars_per_year)),
        })

    if multi:
        test = mean_metrics(tests)
        test.update(split="test", data_file=cfg.data_file, start=None, end=None,
                    transaction_cost=cfg.transaction_cost, slippage=cfg.slippage,
                    long_only=cfg.long_only)
        names = [n for n in strategies[0] if all(n in s for s in strategies)]
        mean_strats = {n: mean_metrics([s[n] for s in strategies]) for n in names}
        report.write_comparison(out, mean_strats)
        report.write_table(out / MARKETS_CSV, rows, list(MARKET_COLUMNS))
    else:
        test = tests[0]
        mean_strats = strategies[0]

    honest = _honest(cfg, markets, net, device, agent_rets, bh_rets, bpys, result,
                     tuning_trials, rows)
    test.update(honest)
    if multi:
        test["markets"] = rows
    report.write_test_metrics(out, test)
    equity = None if multi else (markets[0], agent_rets[0])
    return {"test_metrics": test, "strategies": mean_strats, "markets": rows, "equity": equity}


def _honest(cfg: Config, markets: list[Any], net: Any, device: str, agent_rets: list[Any],
            bh_rets: list[Any], bpys: list[float], result: Any, tuning_trials: int,
            rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The statistics of the module docstring."""
    from engine.train import MIN_EVAL_BARS, greedy_pass

    ci = stats.sharpe_diff_ci(agent_rets, bh_rets, bpys, seed=cfg.seed)
    agent_sharpe = float(np.mean([stats.sharpe(r, b) for r, b in zip(agent_rets, bpys,
                                                                       strict=True)]))
    members = list(getattr(result, "members", None) or [])
    if members:
        seed_values = [float(np.mean([stats.sharpe(greedy_pass(mem.net, m, m.test, cfg,
                                                               device)[1], m.bars_per_year)
                                      for m in markets])) for mem in members]
    else:
        seed_values = [agent_sharpe]
    seeds = stats.seed_summary(seed_values)

    # The validation result the model was chosen on, and how many tries that choice had.
    val_parts = [greedy_pass(net, m, m.val, cfg, device)[1] for m in markets
                 if int(m.val.stop) - int(m.val.start) >= MIN_EVAL_BARS]
    history = list(getattr(result, "history", None) or [])
    per_seed = max(1, len(members))
    episodes = max(1, len(history) // per_seed) if history else int(cfg.episodes)
    # --weight_average keeps no one episode's model: the episodes were not tries to choose from
    chosen_among = 1 if cfg.weight_average else episodes
    n_trials = chosen_among * int(cfg.val_folds or 1) * max(1, int(tuning_trials))
    scale = math.sqrt(bpys[0])
    trial_sharpes = [h["val_sharpe"] / scale for h in history
                     if isinstance(h.get("val_sharpe"), int | float)]
    dsr: dict[str, Any] = {"dsr": None}
    val_sharpe = None
    if val_parts:
        val_ret = np.concatenate(val_parts)
        dsr = stats.deflated_sharpe(val_ret, n_trials, trial_sharpes)
        val_sharpe = float(np.mean([stats.sharpe(v, b) for v, b in zip(val_parts, bpys,
                                                                         strict=False)]))
    gap = None if val_sharpe is None else val_sharpe - agent_sharpe
    psr = stats.probabilistic_sharpe(np.concatenate(agent_rets))
    out = {
        "n_markets": len(markets), "markets_beaten": int(sum(bool(r["beat_bh"]) for r in rows)),
        "bh_sharpe_ratio": float(np.mean([stats.sharpe(b, y) for b, y in zip(bh_rets, bpys,
                                                                           strict=True)])),
        "sharpe_vs_bh": ci["diff"], "sharpe_vs_bh_ci_low": ci["low"],
        "sharpe_vs_bh_ci_high": ci["high"], "sharpe_vs_bh_p_le_0": ci["p_le_0"],
        "n_seeds": seeds["n"], "seed_sharpe_mean": seeds["mean"], "seed_sharpe_std": seeds["std"],
        "seed_sharpe_min": seeds["min"], "seed_sharpe_max": seeds["max"],
        "val_sharpe": val_sharpe, "val_test_gap": gap, "deflated_sharpe": dsr["dsr"],
        "n_trials": n_trials, "test_psr": psr,
    }
    out["verdict"] = stats.verdict_text(ci, n_seeds=seeds["n"], n_markets=len(markets),
                                        dsr=dsr["dsr"], val_test_gap=gap)
    return out
