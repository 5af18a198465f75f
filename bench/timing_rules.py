"""How often does a classic timing rule beat buy-and-hold's Sharpe, one calendar year at a time?
The prior for issue 15's goal, from the engine's own baselines and cost model.

    python bench/timing_rules.py [--data_dir /work/shared/data] [--cost 0.001]

For each daily development market (S&P 500 and NASDAQ 2001-2018, GOOGL 2010-2018) and each
calendar year, every rule of ``engine.baselines`` (long/short, and long-only) is evaluated on that
year with the bars before it as indicator context, from flat, paying ``--cost`` + 0.02 %
slippage per unit of position changed (the issue's measurement), exactly as the agent is judged.
Printed per rule and market: the years in which its Sharpe ratio beat buy-and-hold's and the
mean yearly difference. Nothing is tuned: the rules keep the predecessor's windows.

One more rule, long-only, not among the engine's baselines: ``vol_target``, the volatility-managed
holding of the literature (Moreira and Muir, 2017): hold ``min(1, v / sigma)`` of the market, in
half steps, where ``sigma`` is the last 20 bars' annualised volatility and ``v`` its median over
the three years before the year evaluated. It is the cheapest known way to lift a holding's
Sharpe ratio, so it shows whether sizing rather than timing could beat buy-and-hold here.

A year is a short test (about 250 bars: the standard error of an annualised Sharpe ratio is about
1), so read the counts as a prior, not as a verdict on any rule.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MARKETS = {"SP500": "INDEX_SP500_1D.csv", "NASDAQ": "INDEX_NASDAQ_1D.csv",
           "GOOGL": "STOCKS_GOOGL.csv"}
RULES = ("sell_and_hold", "ma_crossover", "rsi", "bollinger", "random")


def sharpe(r: np.ndarray) -> float:
    sd = float(np.std(r, ddof=1))
    return float(np.mean(r)) / sd * math.sqrt(252) if sd > 1e-12 else 0.0


def vol_target_positions(close: np.ndarray, first: int, window: int = 20) -> np.ndarray:
    """``vol_target``'s positions for bars ``0..len(close)-2`` (flat before ``first``): each
    decided at a bar's close from the bars up to it."""
    r = np.diff(np.log(close))
    sigma = np.full(len(close), np.nan)     # sigma[t]: returns r[t-window..t-1]
    sigma[window:] = np.lib.stride_tricks.sliding_window_view(r, window).std(axis=1) * math.sqrt(252)
    v = float(np.nanmedian(sigma[max(window, first - 756):first]))
    pos = np.zeros(len(close) - 1)
    pos[first:] = np.round(np.minimum(1.0, v / sigma[first:len(close) - 1]) * 2) / 2
    return pos


def main() -> int:
    from engine.baselines import run_baselines
    from engine.data import load_market_data
    from engine.portfolio import position_returns

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data_dir", default="/work/shared/data")
    ap.add_argument("--cost", type=float, default=0.001)
    args = ap.parse_args()
    print(f"{'market':<7} {'rule':<14} {'side':<10} years beating B&H   mean yearly "
          "Sharpe difference")
    for market, file in MARKETS.items():
        md = load_market_data(str(Path(args.data_dir) / file))
        years = md.timestamps.astype("datetime64[Y]").astype(int) + 1970
        spans = [(y, int(np.flatnonzero(years == y)[0]), int(np.flatnonzero(years == y)[-1]))
                 for y in sorted(set(years)) if (years == y).sum() >= 200
                 and np.flatnonzero(years == y)[0] >= 60]
        for long_only in (False, True):
            diffs: dict[str, list[float]] = {r: [] for r in RULES}
            for _, first, last in spans:
                close = md.close[:last + 1]
                got = run_baselines(close, args.cost, 2e-4, start=first, long_only=long_only,
                                    names=("buy_and_hold", *RULES))
                bh = sharpe(got["buy_and_hold"][1])
                for rule in RULES:
                    diffs[rule].append(sharpe(got[rule][1]) - bh)
                if long_only:
                    pos = vol_target_positions(close, first)[first:]
                    got = position_returns(close[first:], pos, args.cost, 2e-4)
                    diffs.setdefault("vol_target", []).append(sharpe(got) - bh)
            for rule in diffs:
                if long_only and rule == "sell_and_hold":
                    continue
                d = np.array(diffs[rule])
                side = "long-only" if long_only else "long/short"
                print(f"{market:<7} {rule:<14} {side:<10} {int((d > 0).sum()):>3} of "
                      f"{len(d):<3}          {d.mean():+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
