"""The check screen, opening the TUI on a run (``run_tui(run=...)``), and the models' rules that
are not read from a screen: which row an error goes on, which providers have cloud fields, which
Sharpe the dashboard shows."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("textual", reason="the TUI is the `tui` extra: pip install 'dqlctl[tui]'")

from textual.widgets import Static  # noqa: E402

from dqlctl import registry as reg  # noqa: E402
from dqlctl.context import Context  # noqa: E402
from dqlctl.errors import ProviderFailure, UsageError  # noqa: E402
from dqlctl.tui.models.dashboard import run_row  # noqa: E402
from dqlctl.tui.models.launch import (  # noqa: E402
    FormValues,
    error_field,
    has_cloud_fields,
    tui_providers,
)
from dqlctl.tui.screens.check import CheckScreen  # noqa: E402
from dqlctl.tui.screens.dashboard import DashboardScreen  # noqa: E402
from dqlctl.tui.screens.run_view import RunScreen  # noqa: E402
from providers import AUTO, DEFAULT_PROVIDER, capabilities_of, provider_names  # noqa: E402
from providers.base import Capability, ProviderError  # noqa: E402
from tests.test_tui import ROOT, Tmux, app_for, make_run, run_async, screen_of, until  # noqa: E402
from tests.test_tui_launch import no_clouds  # noqa: E402, F401 (a fixture)

# -- the models -------------------------------------------------------------------------------


def test_an_error_goes_on_the_row_its_field_names() -> None:
    # the field decides, whatever the message says
    assert error_field(UsageError("the provider's data region", field="episodes")) == "episodes"
    assert error_field(UsageError("x", field="name")) == "name"
    assert error_field(UsageError("x", field="engine_args")) == "engine_flags"
    # a ProviderError that runs turned into a ProviderFailure: its field still counts
    try:
        try:
            raise ProviderError("no such machine type here", field="instance_type")
        except ProviderError as exc:
            raise ProviderFailure(str(exc)) from None
    except ProviderFailure as failure:
        assert error_field(failure) == "instance_type"
    # no field: a provider's error on the provider row, anything else on the data row
    assert error_field(ProviderFailure("the API said no")) == "provider"
    assert error_field(UsageError("episodes must be positive")) == "data"
    assert error_field(UsageError("x", field="max_recoveries")) == "data"  # not on the form


def test_cloud_fields_follow_the_capability_not_the_name() -> None:
    assert tui_providers()[0] == DEFAULT_PROVIDER and tui_providers()[-1] == AUTO
    assert set(tui_providers()) == {*provider_names(), AUTO}
    for name in provider_names():
        assert has_cloud_fields(name) == (Capability.PRICES in capabilities_of(name))
        assert FormValues(provider=name).cloud == has_cloud_fields(name)
    assert has_cloud_fields(AUTO)
    assert not FormValues().cloud  # the default provider: this machine


def test_the_dashboard_shows_the_kept_models_sharpe(tmp_path: Path) -> None:
    ctx = Context(home=tmp_path)
    try:
        kept = make_run(ctx, "kept", reg.SUCCEEDED,
                        progress={"episode": 20, "episodes": 20, "val_sharpe": -1.3,
                                  "best_val_sharpe": 1.22})
        older = make_run(ctx, "older", reg.SUCCEEDED,
                         progress={"episode": 20, "episodes": 20, "val_sharpe": 0.5})
        assert run_row(ctx, kept, ctx.clock()).sharpe == "1.220"
        assert run_row(ctx, older, ctx.clock()).sharpe == "0.500"  # recorded before the fold
    finally:
        ctx.close()


# -- the check screen -------------------------------------------------------------------------


@run_async
async def test_check_screen_says_what_each_provider_needs(tmp_path: Path,
                                                          no_clouds: Path) -> None:  # noqa: F811
    app = app_for(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        app.action_check()
        screen = await screen_of(pilot, app, CheckScreen)
        body = screen.query_one("#check-body", Static)
        text = await until(pilot, lambda: "asking" not in str(body.render())
                           and str(body.render()), "every provider's answer", timeout=60)
        for name in provider_names():
            assert f"✓ {name}\n" in text or f"✗ {name}\n" in text, name
        assert "✓ local" in text and "✗ aws" in text and "fix:" in text
        await pilot.press("escape")
        await screen_of(pilot, app, DashboardScreen)


# -- tables as tall as their rows ------------------------------------------------------------


@run_async
async def test_a_fit_table_is_as_tall_as_its_rows_before_it_has_measured_itself(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost and sweep screens' tables (FitTable) take their header and rows' height from
    the first layout on. A DataTable measures itself when next idle; on a loaded machine the
    screen can be laid out first, and its auto height stays 0 (seen in CI). Here the
    measurement never comes."""
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    from dqlctl.tui.widgets import FitTable

    monkeypatch.setattr(DataTable, "_update_dimensions", lambda self, rows: None)

    class Tables(App[None]):
        CSS = "DataTable { height: auto; max-height: 6; }"

        def compose(self) -> ComposeResult:
            yield FitTable(id="fit")
            yield FitTable(id="long")
            yield DataTable(id="plain")

        def on_mount(self) -> None:
            for table, rows in ((self.query_one("#fit", DataTable), 3),
                                (self.query_one("#long", DataTable), 9),
                                (self.query_one("#plain", DataTable), 3)):
                table.add_column("market")
                table.add_rows([(f"m{i}",) for i in range(rows)])

    app = Tables()
    async with app.run_test(size=(40, 30)) as pilot:
        await pilot.pause()
        assert app.query_one("#fit").size.height == 4           # header + 3 rows
        assert app.query_one("#long").size.height == 6          # capped by max-height: scrolls
        assert app.query_one("#plain").size.height == 0         # the failure FitTable is for


# -- opening on a run -------------------------------------------------------------------------


@run_async
async def test_the_app_opens_on_a_run_and_esc_goes_to_the_dashboard(tmp_path: Path) -> None:
    ctx = Context(home=tmp_path)
    run = make_run(ctx, "first", reg.SUCCEEDED, metrics={"test": {"sharpe_ratio": 1.5}})
    ctx.close()
    app = app_for(tmp_path)
    app.first_run = run.id
    async with app.run_test(size=(120, 40)) as pilot:
        view = await screen_of(pilot, app, RunScreen)
        assert view.run_id == run.id
        await until(pilot, lambda: view.info is not None, "the run's header")
        await pilot.press("escape")
        await screen_of(pilot, app, DashboardScreen)


@run_async
async def test_h_shows_the_runs_history_with_its_capacity_moves(tmp_path: Path) -> None:
    ctx = Context(home=tmp_path)
    run = make_run(ctx, "moved", reg.SUCCEEDED)
    ctx.registry.add_event(run.id, "capacity", {
        "provider": "aws", "region": "us-east-1", "zone": "us-east-1a", "code":
        "InsufficientInstanceCapacity",
        "reason": "aws us-east-1/us-east-1a g4dn.xlarge: InsufficientInstanceCapacity"})
    ctx.registry.add_event(run.id, "failover", {
        "to": "us-west-2", "reason": "no capacity in us-east-1: trying us-west-2"})
    ctx.close()
    app = app_for(tmp_path)
    app.first_run = run.id
    async with app.run_test(size=(120, 40)) as pilot:
        view = await screen_of(pilot, app, RunScreen)
        await until(pilot, lambda: view.info is not None, "the run's header")
        await pilot.press("h")
        from dqlctl.tui.screens.modals import InfoScreen

        modal = await screen_of(pilot, app, InfoScreen)
        text = str(modal.query_one("#info-body", Static).render())
        assert "capacity  (aws us-east-1/us-east-1a g4dn.xlarge: " \
               "InsufficientInstanceCapacity)" in text
        assert text.index("capacity") < text.index("failover  (no capacity in us-east-1: "
                                                   "trying us-west-2)")
        await pilot.press("escape")
        await screen_of(pilot, app, RunScreen)


def test_an_unknown_run_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "dqlctl", "tui", "no-such-run"],
                         capture_output=True, text=True,
                         cwd=ROOT, timeout=60, env={**_env(tmp_path)})
    assert out.returncode == 2, out
    assert out.stderr.strip().splitlines() == [
        "dqlctl: error: no run 'no-such-run' (see `dqlctl ps --all` for run ids and names)"]
    assert out.stdout == ""


def _env(home: Path) -> dict[str, str]:
    import os

    return {**os.environ, "DQLCTL_HOME": str(home), "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1"}


def test_in_tmux_open_the_tui_on_a_finished_run(tmp_path: Path) -> None:
    """As in the README's first steps: a short local run to its end, then the TUI opened on it
    by name shows its view (name, SUCCEEDED, the test metrics); Esc goes to the dashboard."""
    home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, "-m", "dqlctl", "launch", "--provider", "local", "--data",
         "test_small.csv", "--episodes", "2", "--name", "quickstart", "--follow", "--",
         "--n_envs", "4", "--seed", "3"],
        capture_output=True, text=True, cwd=ROOT, env=_env(home), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # the command `make run` prints at its end, run with this interpreter
    printed = re.search(r"control center:\s+\$\(BIN\)/dqlctl ([^\"]+)\"",
                        (ROOT / "Makefile").read_text())
    assert printed, "make run no longer prints the command that opens the TUI"
    assert printed.group(1).split() == ["tui", "quickstart"]
    exit_file = tmp_path / "exit.txt"
    tmux = Tmux(f"cd {ROOT} && env DQLCTL_HOME={home} PYTHONPATH={ROOT} TERM=xterm-256color "
                f"{sys.executable} -m dqlctl {printed.group(1)}; echo EXITED=$? > {exit_file}; "
                "sleep 60")
    try:
        screen = tmux.wait_for("the run view of quickstart", lambda s: "quickstart" in s
                               and "SUCCEEDED" in s and "test metrics" in s)
        assert "sharpe_ratio" in screen and "total_return" in screen
        tmux.keys("Escape")
        tmux.wait_for("the dashboard", lambda s: "BEST VAL SHARPE" in s and "quickstart" in s)
        tmux.keys("q")
        deadline = time.monotonic() + 15
        while not exit_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert exit_file.read_text().strip() == "EXITED=0"
    finally:
        tmux.close()


