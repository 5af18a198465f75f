"""The engine's CLI: the predecessor's entry points and commands, one-line errors with exit 2 and
nothing written, config-file precedence, a light --help, and full-workflow end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.cli import build_parser, config_from_args, main
from engine.config import ConfigError
from engine.events import STDOUT_PREFIX, read_events

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pandas", "numpy", "gymnasium", "matplotlib")


def _run(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                                "HOME": str(cwd)})


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["full-workflow", "--help"]])
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    probe = (f"import json, sys\nfrom engine.cli import main\ntry:\n    main({argv!r})\n"
             "except SystemExit:\n    pass\nprint('@@' + json.dumps(sorted(sys.modules)))")
    proc = _run("-c", probe)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@"))
    loaded = json.loads(line[2:])
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []
    assert "usage: dql-trading" in proc.stdout


def test_three_entry_points() -> None:
    for args in (["dql_trading.py", "--help"], ["-m", "engine", "--help"]):
        proc = _run(*args)
        assert proc.returncode == 0 and "full-workflow" in proc.stdout
    script = Path(sys.executable).parent / "dql-trading"
    assert script.exists(), "the dql-trading console script is not installed"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "check-dependencies" in proc.stdout


def _bad_csv(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.csv"
    bad.write_text("date,open,high,low,close,volume\n2024-01-01,1,1,1,1,1\n"
                   "2024-01-02,1,1,1,-3,1\n")
    return bad


@pytest.mark.parametrize("case,needle", [
    ("unknown_key", "unknown setting 'episodez'"),
    ("negative_episodes", "--episodes must be an integer >= 1"),
    ("huge_seed", "--seed must be an integer in 0..2147483647"),
    ("missing_data", "no_such_file.csv"),
    ("bad_data", "bad.csv line 3, column 'close': non-positive price"),
    ("short_data", "decision bars"),
    ("bad_agent", "invalid choice: 'transformer'"),
    ("bad_split", "--train_frac + --val_frac must be < 1"),
    ("bad_flag_value", "argument --lr"),
    ("evaluate_untrained", "no trained model"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
        case: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    base = ["train", "--results_dir", str(results), "--experiment_name", "x"]
    if case == "unknown_key":
        cfg = tmp_path / "run.toml"
        cfg.write_text("agent_type = 'custom'\nepisodez = 3\n")
        argv = [*base, "--config", str(cfg)]
    elif case == "negative_episodes":
        argv = [*base, "--episodes", "-5"]
    elif case == "huge_seed":  # numpy's seeding refused it after the data had loaded
        argv = [*base, "--seed", str(2**32)]
    elif case == "missing_data":
        argv = [*base, "--data_file", "no_such_file.csv"]
    elif case == "bad_data":
        argv = [*base, "--data_file", str(_bad_csv(tmp_path))]
    elif case == "short_data":
        short = tmp_path / "short.csv"
        rows = [f"2024-01-{d:02d},1,1.1,0.9,{1 + d / 100},5" for d in range(1, 29)]
        short.write_text("date,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
        argv = [*base, "--data_file", str(short)]
    elif case == "bad_agent":
        argv = [*base, "--agent_type", "transformer"]
    elif case == "bad_split":
        argv = [*base, "--train_frac", "0.9", "--val_frac", "0.2"]
    elif case == "bad_flag_value":
        argv = [*base, "--lr", "fast"]
    else:
        argv = ["evaluate", *base[1:]]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dql-trading: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert not results.exists()


def test_missing_data_file_in_a_real_process(tmp_path: Path) -> None:
    proc = _run(str(ROOT / "dql_trading.py"), "full-workflow", "--data_file", "nope.csv",
                "--experiment_name", "x", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "nope.csv" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "results").exists()


@pytest.mark.parametrize("suffix", ["toml", "yaml"])
def test_flags_override_the_file_which_overrides_defaults(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"run.{suffix}"
    if suffix == "toml":
        path.write_text("episodes = 7\nlr = 0.01\n[agent]\nagent_type = 'memory'\n"
                        "hidden_sizes = [32, 16]\n")
    else:
        path.write_text("episodes: 7\nlr: 0.01\nagent:\n  agent_type: memory\n"
                        "  hidden_sizes: [32, 16]\n")
    ns = build_parser().parse_args(["train", "--config", str(path), "--episodes", "3"])
    cfg, given = config_from_args(ns)
    assert (cfg.episodes, cfg.lr, cfg.agent_type, cfg.hidden_sizes) == (3, 0.01, "memory",
                                                                         (32, 16))
    assert cfg.gamma == 0.99 and given == {"episodes"}
    path.write_text("episodes = 'many'\n" if suffix == "toml" else "episodes: many\n")
    with pytest.raises(ConfigError, match="episodes must be an integer"):
        config_from_args(build_parser().parse_args(["train", "--config", str(path)]))


def test_check_dependencies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-dependencies"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "runtime: device" in out


def test_full_workflow_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The predecessor's command (fewer episodes, no tuning) in a real process."""
    proc = _run(str(ROOT / "dql_trading.py"), "full-workflow", "--agent_type", "custom",
                "--data_file", "test_small.csv", "--experiment_name", "local_test",
                "--episodes", "3", "--skip_tuning", "--events_stdout", "--checkpoint_every", "2",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    out = tmp_path / "results" / "local_test"
    for name in ("config.json", "events.jsonl", "model.pth", "train_metrics.json",
                 "test_metrics.json", "engine.log"):
        assert (out / name).is_file(), name
    assert len(list((out / "checkpoints").glob("ckpt-*.pt"))) == 2
    config = json.loads((out / "config.json").read_text())
    assert config["agent_type"] == "custom" and config["runtime"]["torch_threads"] >= 1
    assert config["data"]["bars"] == 500 and config["n_step"] == 3
    events = list(read_events(out / "events.jsonl"))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "finished"
    stages = [e["name"] for e in events if e["event"] == "stage"]
    assert stages[:2] == ["train", "evaluate"]
    assert [e["episode"] for e in events if e["event"] == "episode"] == [1, 2, 3]
    assert [e["split"] for e in events if e["event"] == "evaluation"] == ["val", "test"]
    test_metrics = json.loads((out / "test_metrics.json").read_text())
    assert events[-1]["metrics"]["sharpe_ratio"] == test_metrics["sharpe_ratio"]
    assert isinstance(test_metrics["sharpe_ratio"], float)
    # equity curves for the control center's plot: validation when it improved (the first
    # episode selection looks at always does: custom selects from half the episodes on, so
    # episode 2 of 3), then the test split; each from 1.0, and ending where the metrics say
    equity = [e for e in events if e["event"] == "equity"]
    assert equity[0]["split"] == "val" and equity[0]["episode"] == 2
    assert [e["split"] for e in equity][-1] == "test"
    test_eq = equity[-1]
    comparison = {r["strategy"]: r for r in csv.DictReader(
        (out / "strategy_comparison.csv").open())}
    for key, strategy in (("agent", "agent"), ("buy_and_hold", "buy_and_hold")):
        curve = test_eq[key]
        assert curve[0] == 1.0 and 2 <= len(curve) <= 200
        assert curve[-1] == pytest.approx(1 + float(comparison[strategy]["total_return"]),
                                          rel=1e-5)
    assert sum(line.startswith(STDOUT_PREFIX) for line in proc.stdout.splitlines()) == len(events)

    # evaluate the saved model again, in this process
    assert main(["evaluate", "--experiment_name", "local_test", "--results_dir",
                 str(tmp_path / "results")]) == 0
    again = list(read_events(out / "events.jsonl"))[len(events):]
    test_eval = [e for e in again if e["event"] == "evaluation"]
    assert test_eval and test_eval[0]["metrics"]["total_return"] == \
        events[-1]["metrics"]["total_return"]
    capsys.readouterr()
