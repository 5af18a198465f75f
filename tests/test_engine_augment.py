"""engine.augment (--augment_filter, --augment_stretch): the TDQN paper's low-pass and stretched
copies of a market are what they say, causal, trained on and never validated or tested on, at
no extra training cost."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import augment
from engine.config import Config
from engine.data import MarketData
from engine.train import Trainer, prepare_data, run_training

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _market(n: int = 400, seed: int = 2) -> MarketData:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0003, 0.012, n)))
    ts = np.datetime64("2011-01-03") + np.arange(n).astype("timedelta64[D]")
    spread = rng.uniform(0.001, 0.02, n)
    return MarketData(timestamps=ts.astype("datetime64[ns]"), open=close * (1 + spread / 3),
                      high=close * (1 + spread), low=close * (1 - spread), close=close,
                      volume=rng.uniform(1e5, 1e6, n), source="mkt.csv")


def test_the_low_pass_copy_is_each_price_s_trailing_mean_and_sees_no_later_bar() -> None:
    md = _market()
    out = augment.low_pass(md, 5)
    for name in ("open", "high", "low", "close"):
        x, y = getattr(md, name), getattr(out, name)
        assert y[10] == pytest.approx(x[6:11].mean())
        assert y[2] == pytest.approx(x[:3].mean())      # the first bars: the mean so far
    assert np.array_equal(out.volume, md.volume)
    assert np.std(np.diff(np.log(out.close))) < 0.5 * np.std(np.diff(np.log(md.close)))
    later = dataclasses.replace(md, close=md.close.copy())
    later.close[200:] *= 1.5                              # a different future ...
    assert np.array_equal(augment.low_pass(later, 5).close[:200], out.close[:200])  # same past


@pytest.mark.parametrize("factor", [0.5, 1.5])
def test_a_stretched_copy_scales_every_move_and_keeps_each_bar_s_order(factor: float) -> None:
    md = _market()
    out = augment.stretch(md, factor)
    assert out.close[0] == pytest.approx(md.close[0])
    assert np.allclose(np.diff(np.log(out.close)), factor * np.diff(np.log(md.close)))
    assert np.allclose(np.log(out.high / out.close), factor * np.log(md.high / md.close))
    assert np.all(out.high >= out.open) and np.all(out.open >= out.low)
    assert np.all(out.high > out.low)


def _cfg(**kw: object) -> Config:
    base = {"agent_type": "custom", "hidden_sizes": (16,), "episodes": 2, "n_envs": 8,
            "learning_starts": 100, "batch_size": 32, "replay_ratio": 2.0, "seed": 5,
            "train_frac": 0.6, "val_frac": 0.2}
    return Config(**{**base, **kw}).resolved()  # type: ignore[arg-type]


def test_copies_feed_training_only_and_cost_no_extra_steps() -> None:
    md = _market()
    plain_cfg, aug_cfg = _cfg(), _cfg(augment_filter=5, augment_stretch=0.5)
    data = prepare_data(plain_cfg, md=md)
    plain = Trainer(plain_cfg, data, "cpu", log=lambda _m: None)
    aug = Trainer(aug_cfg, data, "cpu", log=lambda _m: None)
    assert aug.markets == [data]            # what validation, selection and the test use
    envs = aug.env.envs                     # type: ignore[union-attr]
    assert len(envs) == 4                   # the market, its low-pass and two stretched copies
    assert augment.describe(aug_cfg) == \
        ", also on copies: 5-bar low-pass, stretched x0.5, stretched x1.5"   # the log says so
    assert augment.describe(plain_cfg) == ""
    real = envs[0]._lr[data.start:int(data.train.stop) - 1]
    assert np.array_equal(real, np.diff(np.log(md.close[:int(data.train.stop)]))[data.start:])
    for copy in envs[1:]:
        assert len(copy._lr) == len(envs[0]._lr)        # the training split only
        assert not np.allclose(copy._lr, envs[0]._lr)
    # the copies share the real market's budget: an episode steps as many bars in all
    assert aug.steps_per_episode * aug.env.n_envs <= plain.steps_per_episode * plain.env.n_envs
    a = run_training(aug_cfg, data=data, log=lambda _m: None)
    p = run_training(plain_cfg, data=data, log=lambda _m: None)
    assert a.env_steps == pytest.approx(p.env_steps, rel=0.05)
    assert a.val_metrics is not None and p.val_metrics is not None
    assert a.val_metrics["n_bars"] == p.val_metrics["n_bars"]


def test_bad_augmentation_settings_are_one_line_errors(tmp_path: Path) -> None:
    for flag, value in (("--augment_filter", "1"), ("--augment_stretch", "1.5"),
                        ("--augment_stretch", "-0.1")):
        proc = subprocess.run([sys.executable, "-m", "engine", "train", "--data_file",
                               "test_small.csv", "--results_dir", str(tmp_path), flag, value],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and flag in lines[0] and value in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())
