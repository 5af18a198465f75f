"""Sweeps on this machine (issue 20, the local backend), with the real engine on tiny markets.

- a 3 markets x 2 seeds sweep with concurrency 2 finishes, never more than 2 members ran at once
  (read from the members' own start and end events), and its comparison (the report in the
  sweep's folder, ``sweep show --json``) equals what the members wrote in test_metrics.json;
- a sweep nobody follows is driven by later looks (``dqlctl ps``, ``sweep ps``);
- ``sweep down`` stops the running member and cancels the queued ones;
- ``--dry-run`` creates nothing; a bad spec is one line naming the file and the field, exit 2;
- two processes claiming slots at once never exceed the concurrency; the budget stops a sweep;
- the dashboard groups a sweep's members; an older registry gains the sweep tables.
"""

from __future__ import annotations

import asyncio
import csv
import json
import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dqlctl import registry as reg
from dqlctl import registry_schema
from dqlctl.cli import main
from dqlctl.context import Context
from dqlctl.registry import Registry
from dqlctl.registry_sweeps import NOT_STARTED, QUEUED, STARTED, SWEEP_CANCELLED, SWEEP_DONE
from providers.local.compute import LocalProvider

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--", "--n_envs", "4"]


def dqlctl(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DQLCTL_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dqlctl", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture()
def markets(tmp_path: Path) -> Path:
    """Three tiny markets (test_small.csv size): a folder the sweep takes as its data."""
    folder = tmp_path / "markets"
    folder.mkdir()
    data = ROOT / "data"
    for name, source in (("GOOGL", "STOCKS_GOOGL.csv"), ("EURUSD", "FOREX_EURUSD_1H_ASK.csv"),
                         ("SMALL", "test_small.csv")):
        lines = (data / source).read_text().splitlines()[:1000]
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return folder


def max_overlap(home: Path, run_ids: list[str]) -> int:
    """The most member runs unfinished at one time, from their registry events: a run holds a
    slot from its ``created`` event to its terminal state event."""
    r = Registry(home / "registry.db")
    marks: list[tuple[float, int]] = []
    for rid in run_ids:
        events = r.events(rid)
        start = next(e["ts"] for e in events if e["kind"] == "created")
        end = next(e["ts"] for e in events if e["to_state"] in reg.TERMINAL)
        marks += [(start, 1), (end, -1)]
    live = peak = 0
    for _, step in sorted(marks, key=lambda m: (m[0], m[1])):  # an end before a start at a tie
        live += step
        peak = max(peak, live)
    return peak


def test_a_3x2_sweep_runs_two_at_a_time_and_its_comparison_is_the_members_metrics(
        tmp_path: Path, markets: Path) -> None:
    home = tmp_path / "home"
    t0 = time.monotonic()
    proc = dqlctl(home, "sweep", "launch", "--provider", "local", "--data", str(markets),
                  "--seeds", "2", "--agent-type", "dql", "--episodes", "1", "--concurrency",
                  "2", "--name", "fx", "--follow", "--json", *FAST)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["state"] == SWEEP_DONE and data["counts"] == {"SUCCEEDED": 6}
    ids = [m["run_id"] for m in data["members"]]
    assert max_overlap(home, ids) == 2
    print(f"3x2 sweep: {wall:.1f}s wall, members {data['members_s']:.1f}s summed")

    # every member is an ordinary run, linked to its sweep
    listed = json.loads(dqlctl(home, "ps", "--all", "--json").stdout)
    assert {r["id"] for r in listed} == set(ids)
    assert {r["sweep_id"] for r in listed} == {data["id"]}
    logs = dqlctl(home, "logs", ids[0])
    assert logs.returncode == 0 and "episode 1/1" in logs.stdout

    # the comparison is the members' own test metrics
    metrics: dict[str, list[dict[str, Any]]] = {}
    folders: dict[str, Path] = {}
    for run in listed:
        doc = json.loads((Path(run["results_uri"]) / "test_metrics.json").read_text())
        metrics.setdefault(Path(doc["data_file"]).stem, []).append(doc)
        folders.setdefault(Path(doc["data_file"]).stem, Path(run["results_uri"]))
    shown = json.loads(dqlctl(home, "sweep", "show", "fx", "--json").stdout)
    (arm,) = shown["comparison"]["arms"]
    report = json.loads((Path(shown["folder"]) / "benchmark.json").read_text())
    assert arm["report"] == str(Path(shown["folder"]) / "benchmark.html")
    assert Path(arm["report"]).exists()
    for summary in (arm["summary"], report):
        assert summary["n_markets"] == 3 and summary["n_seeds"] == 2
        rows = {row["market"]: row for row in summary["markets"]}
        assert set(rows) == set(metrics) == {"GOOGL", "EURUSD", "SMALL"}
        for market, docs in metrics.items():
            sharpes = [d["sharpe_ratio"] for d in docs]
            assert rows[market]["agent_sharpe_mean"] == pytest.approx(sum(sharpes) / 2)
            assert rows[market]["agent_sharpe_min"] == pytest.approx(min(sharpes))
            assert rows[market]["bh_sharpe"] == pytest.approx(docs[0]["bh_sharpe_ratio"])
            assert rows[market]["beats_bh"] == (sum(sharpes) / 2 > docs[0]["bh_sharpe_ratio"])
        assert summary["markets_beaten"] == sum(r["beats_bh"] for r in rows.values())
        # the other baselines, from each market's strategy_comparison.csv
        for market, docs in metrics.items():
            with open(folders[market] / "strategy_comparison.csv") as fh:
                table = {row["label"]: float(row["sharpe_ratio"]) for row in csv.DictReader(fh)
                         if row["strategy"] not in ("agent", "buy_and_hold")}
            best = max(table, key=table.__getitem__)
            assert (rows[market]["best_baseline"], rows[market]["best_baseline_sharpe"]) == \
                (best, pytest.approx(table[best]))
            assert rows[market]["beats_all"] == (
                sum(d["sharpe_ratio"] for d in docs) / 2 > max(table[best],
                                                               docs[0]["bh_sharpe_ratio"]))
        assert summary["markets_beating_all"] == sum(r["beats_all"] for r in rows.values())
        assert summary["ci_low"] <= summary["sharpe_vs_bh"] <= summary["ci_high"]
    returns = {r["market"]: r["agent_return_mean"] for r in arm["summary"]["markets"]}
    for market, docs in metrics.items():
        assert returns[market] == pytest.approx(sum(d["total_return"] for d in docs) / 2)
    text = dqlctl(home, "sweep", "show", data["id"][:4])
    assert text.returncode == 0
    assert "markets beating buy-and-hold" in text.stdout and "verdict:" in text.stdout
    assert LocalProvider().list_instances({"dqlctl:run": ids[0]}) == []
    shown_in_tui = asyncio.run(_sweep_screen(home, data["id"]))
    assert shown_in_tui["members"] == set(ids) and shown_in_tui["markets"] == set(metrics)


async def _sweep_screen(home: Path, sweep_id: str) -> dict[str, set[str]]:
    """What the TUI's sweep screen shows at 80x24: every member's row and every market's row
    of the comparison within the tables' visible lines (the comparison is wider than 80
    columns, so it has a horizontal scrollbar below its rows)."""
    pytest.importorskip("textual", reason="the TUI is the `tui` extra")
    from textual.widgets import DataTable

    from dqlctl.tui.screens.sweep import SweepScreen
    from tests.test_tui import app_for, screen_of, until

    app = app_for(home)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_sweep(sweep_id)
        screen = await screen_of(pilot, app, SweepScreen)
        members = screen.query_one("#members", DataTable)
        markets = screen.query_one("#markets", DataTable)
        await until(pilot, lambda: members.row_count and markets.row_count
                    and markets.show_horizontal_scrollbar, "the sweep's tables")
        await pilot.pause()
        seen = {}
        for name, table in (("members", members), ("markets", markets)):
            bar = table.scrollbar_size_horizontal if table.show_horizontal_scrollbar else 0
            assert table.size.height - bar == 1 + table.row_count, (name, table.size)
            assert table.max_scroll_y == 0, name
            seen[name] = {str(table.get_row_at(i)[0]) for i in range(table.row_count)}
        return seen


def test_a_sweep_nobody_follows_is_driven_by_later_looks(tmp_path: Path, markets: Path) -> None:
    home = tmp_path / "home"
    spec = tmp_path / "sweep.toml"
    spec.write_text('name = "later"\ndata = ["markets/SMALL.csv"]\nseeds = [5, 6]\n'
                    'agent_type = "dql"\nepisodes = 1\ncommand = "train"\n'
                    'engine_args = ["--n_envs", "4", "--test"]\nconcurrency = 1\n')
    proc = dqlctl(home, "sweep", "launch", str(spec), "--json")
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)
    assert [m["state"] for m in first["members"]] == [reg.RUNNING, QUEUED]
    deadline = time.monotonic() + 240
    seen_states = set()
    while time.monotonic() < deadline:
        dqlctl(home, "ps")  # a plain look starts the queued member once the first has ended
        (row,) = json.loads(dqlctl(home, "sweep", "ps", "--json").stdout)
        seen_states.add(tuple(m["state"] for m in row["members"]))
        if row["state"] == SWEEP_DONE:
            break
        time.sleep(0.5)
    assert row["state"] == SWEEP_DONE, row
    assert row["counts"] == {"SUCCEEDED": 2}
    assert max_overlap(home, [m["run_id"] for m in row["members"]]) == 1


def test_sweep_down_stops_the_running_member_and_cancels_the_queued_ones(
        tmp_path: Path, markets: Path) -> None:
    home = tmp_path / "home"
    proc = dqlctl(home, "sweep", "launch", "--data", str(markets / "SMALL.csv"), "--seeds", "3",
                  "--agent-type", "dql", "--episodes", "500", "--command", "train",
                  "--concurrency", "1", "--json", *FAST)
    assert proc.returncode == 0, proc.stderr
    sweep = json.loads(proc.stdout)
    running = sweep["members"][0]["run_id"]
    refused = dqlctl(home, "sweep", "down", sweep["id"])  # no terminal to ask on
    assert refused.returncode == 2 and "--yes" in refused.stderr
    down = dqlctl(home, "sweep", "down", sweep["id"], "--yes", "--json")
    assert down.returncode == 0, down.stderr
    after = json.loads(down.stdout)
    assert after["state"] == SWEEP_CANCELLED
    assert [m["state"] for m in after["members"]] == [reg.CANCELLED, NOT_STARTED, NOT_STARTED]
    assert LocalProvider().list_instances({"dqlctl:run": running}) == []
    # no later look starts a member of a sweep that is down
    dqlctl(home, "ps")
    (row,) = json.loads(dqlctl(home, "sweep", "ps", "--json").stdout)
    assert row["running"] == 0 and row["counts"] == {reg.CANCELLED: 3}


def test_a_dry_run_lists_the_members_and_creates_nothing(tmp_path: Path, markets: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    spec = tmp_path / "grid.toml"
    spec.write_text('data = "markets/*.csv"\nseeds = 2\nagent_type = ["dql", "custom"]\n'
                    "[grid]\nlr = [0.001, 0.0003]\n")
    home = tmp_path / "home"
    assert main(["sweep", "launch", str(spec), "--dry-run", "--json", "--max-cost", "3"],
                ctx=Context(home=home)) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["members"] == 3 * 2 * 2 * 2 == len(plan["runs"])
    assert plan["max_cost"] == 3.0 and plan["concurrency"] == (os.cpu_count() or 1)
    assert {r["seed"] for r in plan["runs"]} == {1, 2}
    assert {r["settings"]["lr"] for r in plan["runs"]} == {0.001, 0.0003}
    assert all(r["engine_args"][-4:] in (["--torch_threads", "1", "--lr", "0.001"],
                                         ["--torch_threads", "1", "--lr", "0.0003"])
               for r in plan["runs"])
    assert not (home / "sweeps").exists() and not (home / "runs").exists()
    assert Registry(home / "registry.db").list_sweeps() == []
    # flags replace the file's keys
    assert main(["sweep", "launch", str(spec), "--dry-run", "--seeds", "7,8,9", "--grid",
                 "gamma=0.9,0.99", "--agent-type", "dql"], ctx=Context(home=home)) == 0
    text = capsys.readouterr().out
    assert "members      36" in text and "gamma=0.9" in text and "s9" in text


@pytest.mark.parametrize("body,flags,field", [
    ('data = "markets/SMALL.csv"\nseeds = 0\n', [], "seeds"),
    # the engine would refuse this one on its VM, after the first members had launched
    ('data = "markets/SMALL.csv"\nseeds = [1, 4294967296]\n', [], "seeds"),
    ('data = "markets/SMALL.csv"\nsed = 3\n', [], "sed"),
    ('data = "markets/SMALL.csv"\n[grid]\nseed = [1, 2]\n', [], "grid.seed"),
    ('data = "markets/SMALL.csv"\n[grid]\nlearning_rate = [1]\n', [], "grid.learning_rate"),
    ('data = "markets/nothing-*.csv"\n', [], "data"),
    ('data = "markets/SMALL.csv"\nagent_type = "ppo"\n', [], "agent_type"),
    ('data = "markets/SMALL.csv"\nconcurrency = 0\n', [], "concurrency"),
    ('data = "markets/SMALL.csv"\nepisodes = "many"\n', [], "episodes"),
    ('data = "markets/SMALL.csv"\nname = "no spaces"\n', [], "name"),
    ('data = [\n', [], ""),
    ('data = "markets/SMALL.csv"\n', ["--max-cost", "-1"], "max_cost"),
    ('data = "markets/SMALL.csv"\n', ["--provider", "auto"], "provider"),
])
def test_a_bad_spec_is_one_line_naming_the_file_and_field(
        tmp_path: Path, markets: Path, body: str, flags: list[str], field: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(body)
    home = tmp_path / "home"
    assert main(["sweep", "launch", str(spec), *flags], ctx=Context(home=home)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("dqlctl: error: ")
    where = "flags" if flags else str(spec)
    if field == "provider":
        assert "not built yet" in err and "cheapest cloud" in err
    else:
        assert f"{where}: {field}" in err
    assert not (home / "runs").exists() and not (home / "sweeps").exists()


# -- the registry's part, without the engine -----------------------------------------------------

def _sweep(r: Registry, n: int, concurrency: int, max_cost: float | None = None) -> list[str]:
    ids = [reg.new_run_id() for _ in range(n)]
    r.create_sweep(sweep_id="sw1", name="sw", provider="local", concurrency=concurrency,
                   max_cost=max_cost, members=[{"run_id": i, "name": f"m{k}", "request": {}}
                                               for k, i in enumerate(ids)])
    return ids


def _claim_all(path: str, barrier: Any, n: int, out: Any) -> None:
    r = Registry(path)
    barrier.wait()
    out.put(sum(r.claim("sw1", k, name=f"m{k}", provider="local", spec={}) for k in range(n)))


def test_two_processes_claiming_at_once_never_exceed_the_concurrency(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    r = Registry(path)
    _sweep(r, 6, concurrency=2)
    spawn = mp.get_context("spawn")
    barrier, out = spawn.Barrier(2), spawn.Queue()
    procs = [spawn.Process(target=_claim_all, args=(str(path), barrier, 6, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert sum(got) == 2 and r.live_count("sw1") == 2
    assert [m.state for m in r.members("sw1")].count(STARTED) == 2
    # a slot frees when a member ends; a cancelled sweep starts nothing
    started = [m for m in r.members("sw1") if m.state == STARTED]
    r.transition(started[0].run_id, reg.FAILED, reason="x")
    assert r.claim("sw1", 5, name="m5", provider="local", spec={})
    assert not r.claim("sw1", 4, name="m4", provider="local", spec={})  # full again
    assert r.end_sweep("sw1", SWEEP_CANCELLED, "stop")
    assert [m.state for m in r.members("sw1")].count(NOT_STARTED) == 3


def test_the_budget_stops_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = Context(home=tmp_path)
    ids = _sweep(ctx.registry, 3, concurrency=1, max_cost=1.0)
    assert ctx.registry.claim("sw1", 0, name="m0", provider="local", spec={})
    ctx.registry.transition(ids[0], reg.FAILED, reason="x", cost_usd=1.5)
    assert main(["sweep", "show", "sw", "--json"], ctx=ctx) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == SWEEP_CANCELLED and "budget reached: $1.50" in shown["reason"]
    assert [m["state"] for m in shown["members"]] == [reg.FAILED, NOT_STARTED, NOT_STARTED]


def test_the_dashboard_groups_a_sweeps_members(tmp_path: Path) -> None:
    from dqlctl.tui.models.dashboard import MEMBER_MARK, dashboard_rows

    ctx = Context(home=tmp_path)
    r = ctx.registry
    r.create(name="before", provider="local", spec={})
    _sweep(r, 3, concurrency=3)
    for k in range(3):
        assert r.claim("sw1", k, name=f"m{k}", provider="local", spec={})
        r.transition(r.members("sw1")[k].run_id, reg.CANCELLED)
    r.create(name="after", provider="local", spec={})
    rows, _ = dashboard_rows(ctx, reconcile=False)
    assert [row.name for row in rows] == ["after", *(f"{MEMBER_MARK}m{k}" for k in range(3)),
                                          "before"]
    assert [row.name for row in rows if row.matches("sw")] == \
        [f"{MEMBER_MARK}m{k}" for k in range(3)]


def test_an_older_registry_gains_the_sweep_tables(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    for _version, step in registry_schema._MIGRATIONS[:3]:
        step(con)
    con.execute("PRAGMA user_version = 3")
    con.execute("INSERT INTO runs (id, name, provider, state, created_at, updated_at)"
                " VALUES ('r1', 'old', 'local', 'SUCCEEDED', 0, 0)")
    con.commit()
    con.close()
    r = Registry(path)
    assert r.get("r1").sweep_id is None and r.list_sweeps() == []
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == registry_schema.SCHEMA_VERSION


def test_the_tui_sweep_view_drives_the_sweep_and_shows_the_members_comparison(
        tmp_path: Path) -> None:
    """From the dashboard, ``w`` on a member opens its sweep: the view's refreshes are looks
    (the queued member starts once the first has ended), the comparison that appears is the
    members' own test metrics, and Enter on a member opens its run view."""
    pytest.importorskip("textual")
    from textual.widgets import DataTable

    from dqlctl.render import SWEEP_MARKET_COLUMNS, SWEEP_MEMBER_COLUMNS
    from dqlctl.tui.screens.dashboard import DashboardScreen
    from dqlctl.tui.screens.run_view import RunScreen
    from dqlctl.tui.screens.sweep import SweepScreen
    from tests.test_tui import app_for, run_async, screen_of, until

    home = tmp_path / "home"
    data = tmp_path / "SMALL.csv"
    data.write_text("\n".join((ROOT / "data" / "test_small.csv").read_text()
                              .splitlines()[:1000]) + "\n")
    spec = tmp_path / "sweep.toml"
    spec.write_text(f'name = "tui"\ndata = ["{data}"]\nseeds = [5, 6]\nagent_type = "dql"\n'
                    'episodes = 1\ncommand = "train"\nconcurrency = 1\n'
                    'engine_args = ["--n_envs", "4", "--test"]\n')
    proc = dqlctl(home, "sweep", "launch", str(spec), "--json")
    assert proc.returncode == 0, proc.stderr
    launched = json.loads(proc.stdout)
    assert [m["state"] for m in launched["members"]] == [reg.RUNNING, QUEUED]

    def cells(table: Any, row: int) -> list[str]:
        return [str(c) for c in table.get_row_at(row)]

    @run_async
    async def drive() -> None:
        app = app_for(home)
        async with app.run_test(size=(140, 45)) as pilot:
            await screen_of(pilot, app, DashboardScreen)
            await until(pilot, lambda: app.screen.query_one("#runs", DataTable).row_count == 2,
                        "the two members on the dashboard")
            await pilot.press("w")
            screen = await screen_of(pilot, app, SweepScreen)
            view = await until(pilot, lambda: screen.view is not None
                               and screen.view.state == SWEEP_DONE and screen.view.arms
                               and screen.view, "the sweep done and compared", timeout=240)
            members = screen.query_one("#members", DataTable)
            state = SWEEP_MEMBER_COLUMNS.index("STATE")
            assert [cells(members, i)[state] for i in range(members.row_count)] == \
                [reg.SUCCEEDED, reg.SUCCEEDED]
            markets = screen.query_one("#markets", DataTable)
            assert markets.row_count == 1
            row = dict(zip(SWEEP_MARKET_COLUMNS, cells(markets, 0), strict=True))
            docs = [json.loads((Path(r.results_uri) / "test_metrics.json").read_text())
                    for r in Context(home=home).registry.sweep_runs(view.id)]
            assert row["MARKET"] == "SMALL" and row["SEEDS"] == "2"
            assert row["SHARPE MEAN"] == f"{sum(d['sharpe_ratio'] for d in docs) / 2:.3f}"
            assert row["B&H SHARPE"] == f"{docs[0]['bh_sharpe_ratio']:.3f}"
            verdict = str(screen.query_one("#verdict").render())
            assert "markets beating buy-and-hold" in verdict and "verdict:" in verdict
            first = cells(members, 0)[0]
            members.focus()
            await pilot.press("enter")
            run_screen = await screen_of(pilot, app, RunScreen)
            assert run_screen.run_id == first

    drive()
