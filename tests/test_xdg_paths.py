"""Where dqlctl keeps its files: XDG base directories for the default home, everything inside an
explicit home, and the old places still read."""

from __future__ import annotations

from pathlib import Path

import pytest

from dqlctl.context import Context
from dqlctl.registry import default_home
from providers.prices.catalog import LivePrice, read_cache, write_cache


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DQLCTL_HOME", raising=False)
    for var, sub in (("XDG_DATA_HOME", "data"), ("XDG_CONFIG_HOME", "config"),
                     ("XDG_CACHE_HOME", "cache")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


def test_default_home_reads_config_from_xdg_config_home(xdg: Path) -> None:
    home = default_home()
    assert home == xdg / "data" / "dqlctl"
    conf = xdg / "config" / "dqlctl" / "config.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text('[providers.local]\nprice_per_hour = 0.5\n')
    ctx = Context(home=home)
    assert ctx.config_path == conf
    assert ctx.config["providers"]["local"]["price_per_hour"] == 0.5


def test_the_old_config_place_is_still_read_until_a_new_one_exists(xdg: Path) -> None:
    home = default_home()
    old = home / "config.toml"
    old.parent.mkdir(parents=True)
    old.write_text('[providers.local]\nprice_per_hour = 0.25\n')
    assert Context(home=home).config["providers"]["local"]["price_per_hour"] == 0.25
    new = xdg / "config" / "dqlctl" / "config.toml"
    new.parent.mkdir(parents=True)
    new.write_text('[providers.local]\nprice_per_hour = 0.75\n')
    assert Context(home=home).config["providers"]["local"]["price_per_hour"] == 0.75


def test_an_explicit_home_keeps_its_own_config(xdg: Path, tmp_path: Path) -> None:
    (xdg / "config" / "dqlctl").mkdir(parents=True)
    (xdg / "config" / "dqlctl" / "config.toml").write_text("[providers.local]\nprice_per_hour = 9\n")
    home = tmp_path / "elsewhere"
    home.mkdir()
    (home / "config.toml").write_text("[providers.local]\nprice_per_hour = 1\n")
    ctx = Context(home=home)
    assert ctx.config_path == home / "config.toml"
    assert ctx.config["providers"]["local"]["price_per_hour"] == 1


def test_the_price_cache_goes_to_xdg_cache_home_and_the_old_one_is_read(xdg: Path) -> None:
    home = default_home()
    old = write_cache(xdg / "legacy", "aws", {"aws:x": LivePrice(spot=0.1)}, 1.0, "e", None)
    (home / "prices").mkdir(parents=True)
    old.rename(home / "prices" / "aws.json")
    assert read_cache(home, "aws")["prices"]["aws:x"]["spot"] == 0.1   # the old place, read
    path = write_cache(home, "aws", {"aws:x": LivePrice(spot=0.2)}, 2.0, "e", None)
    assert path == xdg / "cache" / "dqlctl" / "prices" / "aws.json"
    assert read_cache(home, "aws")["prices"]["aws:x"]["spot"] == 0.2   # the new one wins
