"""The launch form's cloud rows, driven by Textual's pilot: region, instance type with its catalog
prices, spot, max cost; the credentials check inline; the plan with its price and estimate.

Nothing here depends on the machine's cloud setup: ``no_clouds`` removes every AWS_/GOOGLE_/
AZURE_ variable and points the SDKs' config files at an empty folder; the one test that needs
working AWS credentials gets dummy keys and a moto server (``aws_env``, tests/conftest.py) for
the STS call that ``AwsProvider.check()`` makes. Nothing is launched on a cloud: a local launch
from the form is tests/test_tui.py's. Tests wait on what the app shows, never on time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("textual", reason="the TUI is the `tui` extra: pip install 'dqlctl[tui]'")

from textual.widgets import Button, Input, Select, Switch  # noqa: E402

from dqlctl.context import Context  # noqa: E402
from dqlctl.tui.models import launch as model  # noqa: E402
from dqlctl.tui.models.launch import FormValues  # noqa: E402
from dqlctl.tui.screens.launch import LaunchScreen  # noqa: E402
from providers.prices.estimate import lookup  # noqa: E402
from tests.test_tui import SIZE, _error, app_for, plan_now, run_async, screen_of, until  # noqa: E402

CLOUD_ENV = ("AWS_", "GOOGLE_", "GCLOUD_", "CLOUDSDK_", "AZURE_", "MSI_", "IDENTITY_")


@pytest.fixture
def no_clouds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No cloud credentials or settings from this machine; instance metadata lookups off."""
    for key in list(os.environ):
        if key.startswith(CLOUD_ENV):
            monkeypatch.delenv(key)
    empty = tmp_path / "no-cloud-config"
    empty.mkdir()
    monkeypatch.setenv("HOME", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(empty / "gcloud"))
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(empty / "azure"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    return empty


@pytest.fixture
def aws_dummy(no_clouds: Path, aws_env: str) -> str:
    """Dummy AWS keys (AWS_ACCESS_KEY_ID=testing ...) good for a moto server; its endpoint."""
    return aws_env


def options(select: Select[str]) -> dict[str, str]:
    """The select's choices: value -> label text (blank left out)."""
    return {value: str(getattr(label, "plain", label))
            for label, value in select._options if isinstance(value, str)}


def registry_empty(path: Path) -> bool:
    ctx = Context(home=path)
    try:
        return ctx.registry.list() == []
    finally:
        ctx.close()


async def open_form(pilot: Any, app: Any, values: FormValues | None = None) -> LaunchScreen:
    if values is None:
        app.action_launch()
    else:
        app.push_screen(LaunchScreen(values))
    return await screen_of(pilot, app, LaunchScreen)


def settled(screen: LaunchScreen) -> model.Checked | None:
    """The check of what the form holds now, credentials included; None until it is back."""
    checked = screen.checked
    if checked is None or checked.values != screen.values() or checked.credentials == "pending":
        return None
    return checked


@run_async
async def test_aws_without_credentials_says_so_on_the_provider_row(tmp_path: Path,
                                                                    no_clouds: Path) -> None:
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_form(pilot, app)
        launch = screen.query_one("#launch", Button)
        await until(pilot, lambda: plan_now(screen), "the local plan")
        assert not screen.query_one("#row-region").display  # local: no cloud rows

        screen.query_one("#provider", Select).value = "aws"
        await until(pilot, lambda: _error(screen, "provider").startswith("✗ aws: credentials:"),
                    "the check's credentials item on the provider row")
        error = _error(screen, "provider")
        assert "no AWS credentials" in error and "AWS_ACCESS_KEY_ID" in error
        assert "fix: aws configure" in error
        assert screen.query_one("#row-provider").has_class("-invalid")
        assert all(screen.query_one(f"#row-{key}").display for key in model.CLOUD_FIELDS)
        assert launch.disabled

        # a region lets the plan and its price show; launch still waits for credentials
        region = screen.query_one("#region", Select)
        await until(pilot, lambda: "us-east-1" in options(region), "the aws regions")
        region.value = "us-east-1"
        await until(pilot, lambda: (c := settled(screen)) and c.plan
                    and c.plan.get("region") == "us-east-1", "the plan in us-east-1")
        assert "no AWS credentials" in _error(screen, "provider")
        assert launch.disabled
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert launch.disabled and isinstance(app.screen, LaunchScreen)
    assert registry_empty(tmp_path)


@run_async
async def test_instance_types_show_catalog_prices_and_the_plan_prices_the_run(
        tmp_path: Path, aws_dummy: str) -> None:
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_form(pilot, app)
        screen.query_one("#provider", Select).value = "aws"
        region = screen.query_one("#region", Select)
        await until(pilot, lambda: {"us-east-1", "us-west-2", "eu-west-1"} <= set(options(region)),
                    "the catalog's aws regions")
        region.value = "us-east-1"
        itype = screen.query_one("#instance_type", Select)
        # priced in us-east-1 (not "from" the lowest over the regions); p5e.48xlarge, which the
        # catalog has in us-west-2 only, is not offered
        await until(pilot, lambda: "g4dn.xlarge" in options(itype)
                    and "from" not in options(itype)["g4dn.xlarge"], "us-east-1's types")
        assert "p5e.48xlarge" not in options(itype)

        labels = options(itype)
        od = lookup("aws", "g4dn.xlarge", "us-east-1", spot=False, home=tmp_path)
        sp = lookup("aws", "g4dn.xlarge", "us-east-1", spot=True, home=tmp_path)
        assert od and sp and od.price_per_hour and sp.price_per_hour
        label = labels["g4dn.xlarge"]
        assert re.match(r"g4dn\.xlarge +T4 x1 ", label), label
        assert f"${od.price_per_hour:.3f}/h" in label
        assert f"spot ${sp.price_per_hour:.3f}/h" in label
        spots = [re.search(r"spot +(\$[0-9.]+/h|n/a)$", t) for t in labels.values()]
        assert all(spots), labels
        known = [float(m.group(1)[1:-2]) for m in spots if m and m.group(1) != "n/a"]
        assert known == sorted(known)  # cheapest spot first, those with no spot price last
        assert [m.group(1) for m in spots if m][len(known):] == ["n/a"] * (len(spots) - len(known))

        itype.value = "g4dn.xlarge"
        await until(pilot, lambda: (c := settled(screen)) and c.ok, "a launchable aws plan")
        checked = screen.checked
        assert checked is not None and checked.plan is not None
        assert checked.plan["instance_type"] == "g4dn.xlarge"
        assert checked.plan["price"] == f"${sp.price_per_hour:.4f}/h (spot, catalog)"
        cost = dict(checked.cost)
        assert f"spot ${sp.price_per_hour:.3f}" in cost["$/h"]
        assert cost["estimate"].startswith(f"~${sp.price_per_hour:.2f} for 1 h spot")
        assert not _error(screen, "provider")
        assert not screen.query_one("#launch", Button).disabled

        # on-demand, 10 hours, a $5 budget: the plan follows
        screen.query_one("#spot", Switch).value = False
        screen.query_one("#hours", Input).value = "10"
        screen.query_one("#max_cost", Input).value = "5"
        await until(pilot, lambda: (c := settled(screen)) and c.ok
                    and "on-demand" in str(c.plan and c.plan["price"]), "the on-demand plan")
        checked = screen.checked
        assert checked is not None and checked.plan is not None
        assert checked.plan["price"] == f"${od.price_per_hour:.4f}/h (on-demand, catalog)"
        assert checked.plan["budget"].startswith("stop at $5.00")
        cost = dict(checked.cost)
        assert cost["estimate"].startswith(f"~${10 * od.price_per_hour:.2f} for 10 h on-demand")
        assert cost["budget buys"].startswith(f"about {5 / od.price_per_hour:.1f} h")
        request = model.build_request(checked.values)
        assert (request.provider, request.region, request.instance_type, request.spot,
                request.max_cost) == ("aws", "us-east-1", "g4dn.xlarge", False, 5.0)
    assert registry_empty(tmp_path)


@run_async
async def test_an_unknown_instance_type_is_marked_on_its_row(tmp_path: Path,
                                                             no_clouds: Path) -> None:
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_form(pilot, app, FormValues(provider="aws", region="us-east-1",
                                                        instance_type="p9.bogus"))
        itype = screen.query_one("#instance_type", Select)
        await until(pilot, lambda: "unknown instance type 'p9.bogus'" in
                    _error(screen, "instance_type"), "the unknown type's error")
        assert itype.value == "p9.bogus" and "not in the catalog" in options(itype)["p9.bogus"]
        assert screen.query_one("#row-instance_type").has_class("-invalid")
        assert screen.query_one("#launch", Button).disabled

        # a type this region has (g6.xlarge: us-east-1 and us-west-2), then a region without it
        await until(pilot, lambda: "g6.xlarge" in options(itype), "us-east-1's types")
        itype.value = "g6.xlarge"
        await until(pilot, lambda: not _error(screen, "instance_type"), "the error to clear")
        screen.query_one("#region", Select).value = "eu-west-1"
        await until(pilot, lambda: "not offered in aws eu-west-1" in
                    _error(screen, "instance_type"), "the not-in-this-region error")
        assert itype.value == "g6.xlarge"  # kept, marked: the operator sees what is wrong
        assert "not in the catalog for aws eu-west-1" in options(itype)["g6.xlarge"]
        assert "us-east-1, us-west-2" in _error(screen, "instance_type")  # and where it is

        screen.query_one("#max_cost", Input).value = "-5"
        await until(pilot, lambda: "positive number" in _error(screen, "max_cost"),
                    "the max cost error")
        screen.query_one("#max_cost", Input).value = "lots"
        await until(pilot, lambda: "'lots'" in _error(screen, "max_cost"), "max cost: not a number")
    assert registry_empty(tmp_path)


@run_async
async def test_a_bad_data_uri_is_marked_on_the_data_row(tmp_path: Path, no_clouds: Path) -> None:
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_form(pilot, app)
        data = screen.query_one("#data", Input)
        data.value = "ftp://bucket/x.csv"
        await until(pilot, lambda: "unknown scheme 'ftp://'" in _error(screen, "data"),
                    "the scheme error")
        assert "s3://" in _error(screen, "data")  # says what would do
        assert screen.query_one("#launch", Button).disabled
        data.value = "s3://"
        await until(pilot, lambda: "names no bucket" in _error(screen, "data"), "no bucket")
        data.value = "test_small.csv"
        await until(pilot, lambda: plan_now(screen), "the plan")
        assert not _error(screen, "data")


@run_async
async def test_back_to_local_hides_the_cloud_rows_and_tab_follows_the_fields(
        tmp_path: Path, no_clouds: Path) -> None:
    app = app_for(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_form(pilot, app)
        provider = screen.query_one("#provider", Select)
        provider.value = "aws"
        await until(pilot, lambda: screen.query_one("#row-region").display, "the cloud rows")
        screen.query_one("#max_cost", Input).value = "5"
        await until(pilot, lambda: settled(screen), "the aws check")

        provider.focus()
        order = []
        for _ in range(7):
            await pilot.press("tab")
            order.append(app.focused.id if app.focused else None)
        assert order == ["region", "instance_type", "spot", "max_cost", "hours", "data",
                         "agent_type"]

        provider.value = "local"
        await until(pilot, lambda: (c := settled(screen)) and c.ok, "the local plan")
        assert not any(screen.query_one(f"#row-{key}").display for key in model.CLOUD_FIELDS)
        assert not any(screen.query_one(f"#err-{key}").display for key in model.CLOUD_FIELDS)
        assert not _error(screen, "provider")
        checked = screen.checked
        assert checked is not None and checked.plan is not None
        assert checked.plan["provider"] == "local" and not checked.cost
        request = model.build_request(checked.values)  # what ctrl+l hands runs.launch
        assert (request.provider, request.region, request.instance_type, request.max_cost) == \
            ("local", None, None, None)
        assert not screen.query_one("#launch", Button).disabled

        provider.focus()
        await pilot.press("tab")
        assert app.focused is screen.query_one("#data", Input)
    assert registry_empty(tmp_path)
