"""``dqlctl cost``: offers from the bundled catalog, live refresh through the CLI, spend per run.

The figures printed are checked against ``providers/prices/data/catalog.csv`` itself, read here
with the csv module, not through the code under test.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import dqlctl.cli as cli
from dqlctl.context import Context
from dqlctl.registry import Registry
from providers.prices import catalog
from tests.test_prices import (
    NOW,
    PriceAPI,
    _Server,
    aws_product,
    azure_item,
    gcp_sku,
    point_clients_at,
    serve_prices,
    spot_item,
)

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def dqlctl(home: Path, *argv: str, now: float = NOW) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    ctx = Context(home=home, stdout=out, stderr=err, clock=Clock(now))
    code = cli.main(list(argv), ctx=ctx)
    return code, out.getvalue(), err.getvalue()


def catalog_rows() -> list[dict[str, str]]:
    with open(catalog.CATALOG_PATH, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def table(text: str) -> list[dict[str, str]]:
    """The rows of the offers table in ``text``, by header."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("PROVIDER"))
    headers = re.split(r"\s{2,}", lines[start].strip())
    rows = []
    for line in lines[start + 1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(headers):
            break
        rows.append(dict(zip(headers, cells, strict=True)))
    return rows


def test_a100_offers_from_all_three_clouds_match_the_catalog(tmp_path: Path) -> None:
    code, out, _ = dqlctl(tmp_path, "cost", "--gpu", "A100", "--hours", "10")
    assert code == 0, out
    shown = table(out)
    expected = {(r["provider"], r["region"], r["instance_type"]): r for r in catalog_rows()
                if r["gpu"] == "A100"}
    assert len(shown) == len(expected) and {r["PROVIDER"] for r in shown} == {"aws", "azure",
                                                                                "gcp"}
    totals = []
    for row in shown:
        src = expected[(row["PROVIDER"], row["REGION"], row["INSTANCE TYPE"])]
        assert float(row["ON-DEMAND $/H"]) == float(src["on_demand"])
        assert float(row["SPOT $/H"]) == float(src["spot"])
        assert row["GPUS"] == f"A100 x{src['gpu_count']}"
        assert row["VCPUS"] == src["vcpus"] and float(row["MEM GiB"]) == float(src["memory_gib"])
        saving = 100 * (1 - float(src["spot"]) / float(src["on_demand"]))
        assert row["SAVING"] == f"{saving:.0f}%"
        total = float(row["ESTIMATE"].strip("$*").replace(",", ""))
        assert total == round(10 * float(src["spot"]), 2)     # no band known for A100 rows
        totals.append(total)
    assert totals == sorted(totals)
    assert "STALE" in out and "2025-11-28" in out

    code, text, _ = dqlctl(tmp_path, "cost", "--gpu", "A100", "--hours", "10", "--json")
    data = json.loads(text)
    assert code == 0 and len(data["offers"]) == len(shown)
    for row, offer in zip(shown, data["offers"], strict=True):
        src = expected[(offer["provider"], offer["region"], offer["instance_type"])]
        assert (offer["provider"], offer["region"], offer["instance_type"]) == \
            (row["PROVIDER"], row["REGION"], row["INSTANCE TYPE"])
        assert offer["extra"]["on_demand"] == float(src["on_demand"])
        assert offer["price_per_hour"] == offer["extra"]["spot_price"] == float(src["spot"])
        assert offer["extra"]["estimate"]["total_usd"] == pytest.approx(10 * float(src["spot"]))
        assert offer["extra"]["stale"] and offer["extra"]["price_source"] == "catalog"
    assert data["prices"]["aws"]["catalog_as_of"] == catalog.CATALOG_AS_OF


def test_on_demand_egress_and_interruption_columns(tmp_path: Path) -> None:
    code, out, _ = dqlctl(tmp_path, "cost", "--gpu", "T4:1", "--region", "us-east-1",
                          "--on-demand", "--hours", "2", "--data-gb", "100", "--data-from", "az")
    assert code == 0
    rows = {r["INSTANCE TYPE"]: r for r in table(out)}
    g4 = rows["g4dn.xlarge"]
    # 2 h x 0.526 + 100 GB out of Azure at $0.087
    assert g4["ESTIMATE"] == "$9.75" and g4["EGRESS"] == "$8.70" and g4["INTERRUPTIONS"] == "-"
    code, out, _ = dqlctl(tmp_path, "cost", "--instance-type", "g4dn.xlarge", "--region",
                          "us-east-1", "--hours", "100", "--json")
    [offer] = json.loads(out)["offers"]
    est = offer["extra"]["estimate"]
    assert offer["extra"]["interruption_band"] == "5-10%" and est["overhead_frac"] > 0
    assert est["total_usd"] == pytest.approx(100 * 0.2 * (1 + est["overhead_frac"]))


@pytest.mark.parametrize("argv,message", [
    (["--hours", "0"], "--hours"),
    (["--data-gb", "5"], "--data-from"),
    (["--gpu", "A100:two"], "whole number"),
    (["--provider", "oracle"], "oracle"),
])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, argv: list[str], message: str) -> None:
    code, _, err = dqlctl(tmp_path, "cost", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_nothing_matches_names_the_known_gpus(tmp_path: Path) -> None:
    code, out, _ = dqlctl(tmp_path, "cost", "--gpu", "Z80")
    assert code == 2 and "no offers match" in out and "A100" in out


# -- --refresh through the CLI -----------------------------------------------------------------


@pytest.fixture(scope="module")
def _server() -> Iterator[_Server]:
    with serve_prices() as server:
        yield server


@pytest.fixture
def api(_server: _Server, monkeypatch: pytest.MonkeyPatch) -> PriceAPI:
    return point_clients_at(_server, monkeypatch)


def _serve_a100(api: PriceAPI) -> None:
    api.aws_products = {"p4d.24xlarge": [aws_product("p4d.24xlarge", r, p) for r, p in (
        ("us-east-1", "21.96"), ("us-west-2", "21.96"), ("eu-west-1", "23.7"))]}
    api.aws_spot = {r: [spot_item("p4d.24xlarge", f"{r}a", p, "2026-11-29T11:00:00.000Z")]
                    for r, p in (("us-east-1", "5.5"), ("us-west-2", "6.0"),
                                 ("eu-west-1", "7.0"))}
    api.azure_pages = [{"Items": [azure_item("Standard_ND96asr_v4", region, price, spot=spot)
                                  for region in ("eastus", "westus2")
                                  for price, spot in ((27.197, False), (4.4, True))]}]
    r = "us-central1"
    api.gcp_pages = [{"skus": [
        gcp_sku("A2 Instance Core running in Americas", r, 0.031611),
        gcp_sku("A2 Instance Ram running in Americas", r, 0.004237, unit="GiBy.h"),
        gcp_sku("Nvidia Tesla A100 GPU running in Americas", r, 2.933908)]}]


def test_refresh_all_three_then_offers_use_live_prices(api: PriceAPI, tmp_path: Path) -> None:
    _serve_a100(api)
    code, out, err = dqlctl(tmp_path, "cost", "--gpu", "A100:8", "--refresh")
    assert code == 0, err
    assert re.search(r"aws: 3 of 3 prices refreshed", err)
    assert re.search(r"azure: 2 of 2 prices refreshed", err)
    assert re.search(r"gcp: 1 of 2 prices refreshed .*1 not in the answer", err)
    rows = {(r["PROVIDER"], r["REGION"]): r for r in table(out)}
    assert rows[("aws", "us-east-1")]["SPOT $/H"] == "5.5"
    assert rows[("aws", "us-east-1")]["PRICE AGE"] == "live 0m"
    assert rows[("azure", "eastus")]["SPOT $/H"] == "4.4"
    gcp = rows[("gcp", "us-central1")]
    # on-demand from the SKUs (8 GPUs + 96 cores + 680 GiB: the catalog's figure again); no
    # spot SKUs in the answer, so the spot price shown is still the catalog's
    assert gcp["ON-DEMAND $/H"] == "29.38708" and gcp["PRICE AGE"] == "catalog 366d STALE"
    assert [r["PROVIDER"] for r in table(out)][:2] == ["azure", "azure"]    # 4.4 < 5.5
    assert list(catalog.cache_dir(tmp_path).glob("*.json"))
    # four days later the live prices are shown as stale
    code, out, _ = dqlctl(tmp_path, "cost", "--gpu", "A100:8", now=NOW + 4 * 86400)
    assert {r["PRICE AGE"] for r in table(out) if r["PROVIDER"] == "aws"} == {"live 4d STALE"}


def test_refresh_failure_keeps_the_cache_says_so_and_exits_3(api: PriceAPI,
                                                             tmp_path: Path) -> None:
    _serve_a100(api)
    assert dqlctl(tmp_path, "cost", "--gpu", "A100", "--provider", "azure", "--refresh")[0] == 0
    api.azure_pages = [{"Items": [azure_item("Standard_ND96asr_v4", "eastus", 1.0)]},
                       {"Items": None}]
    code, out, err = dqlctl(tmp_path, "cost", "--gpu", "A100", "--provider", "azure",
                            "--refresh", now=NOW + 60)
    assert code == 3
    assert "azure: refresh failed: malformed answer on page 2" in err
    assert "kept the cache of 2026-11-29 12:00 UTC" in err
    assert {r["SPOT $/H"] for r in table(out)} == {"4.4"}                # the kept prices
    code, text, _ = dqlctl(tmp_path, "cost", "--gpu", "A100", "--provider", "azure",
                           "--refresh", "--json", now=NOW + 60)
    data = json.loads(text)
    assert code == 3 and data["refresh"][0]["ok"] is False and data["offers"]


# -- spend per run ------------------------------------------------------------------------------


def _run(reg: Registry, clock: Clock, provider: str, start: float, hours: float,
         price: float | None) -> str:
    clock.t = start
    run = reg.create(name=f"{provider}-run", provider=provider, spec={})
    reg.transition(run.id, "PROVISIONING")
    clock.t = start + 60
    reg.transition(run.id, "BOOTSTRAPPING", price_per_hour=price)
    clock.t = start + 120
    reg.transition(run.id, "RUNNING")
    clock.t = start + 60 + hours * 3600
    reg.transition(run.id, "COLLECTING")
    reg.transition(run.id, "SUCCEEDED")
    return run.id


def test_runs_totals_by_provider_and_month(tmp_path: Path) -> None:
    clock = Clock(0)
    reg = Registry(tmp_path / "registry.db", clock=clock)
    oct_ = datetime(2026, 10, 10, tzinfo=UTC).timestamp()
    nov = datetime(2026, 11, 2, tzinfo=UTC).timestamp()
    _run(reg, clock, "aws", oct_, 2.0, 1.5)          # 2 h x 1.5 = 3.00
    _run(reg, clock, "aws", nov, 1.0, 2.4655)        # 1 h x 2.4655
    _run(reg, clock, "local", nov, 3.0, None)        # local: no price
    # a run still going: billed up to now
    clock.t = nov
    live = reg.create(name="live", provider="aws", spec={})
    reg.transition(live.id, "PROVISIONING")
    reg.transition(live.id, "BOOTSTRAPPING", price_per_hour=1.0)
    reg.close()
    code, out, _ = dqlctl(tmp_path, "cost", "--runs", now=nov + 1800)
    assert code == 0
    lines = [re.split(r"\s{2,}", x.strip()) for x in out.strip().splitlines()]
    assert lines[0] == ["MONTH", "PROVIDER", "RUNS", "INSTANCE-HOURS", "COST"]
    assert ["2026-11", "aws", "2", "1.50", "$2.97"] in lines      # 2.4655 + 0.5
    assert ["2026-11", "local", "1", "3.00", "$0.00"] in lines
    assert ["2026-10", "aws", "1", "2.00", "$3.00"] in lines
    assert lines[-1] == ["total", "4", "6.50", "$5.97"]
    code, text, _ = dqlctl(tmp_path, "cost", "--runs", "--json", "--provider", "aws",
                           now=nov + 1800)
    data = json.loads(text)
    assert data["total_usd"] == pytest.approx(5.9655)
    assert [m["month"] for m in data["months"]] == ["2026-11", "2026-10"]


# -- import hygiene ---------------------------------------------------------------------------------

PROBE = """
import json, sys
import dqlctl.cli as cli
try:
    cli.main({argv!r})
except SystemExit:
    pass
print("@@" + json.dumps(sorted(sys.modules)))
"""


def test_cost_imports_no_sdk(tmp_path: Path) -> None:
    heavy = ("boto3", "botocore", "google", "azure", "numpy", "pandas", "textual", "torch")
    for argv in (["cost", "--help"], ["cost", "--gpu", "A100"]):
        proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60,
                              env={"DQLCTL_HOME": str(tmp_path), "PATH": "/usr/bin"})
        marker = [x for x in proc.stdout.splitlines() if x.startswith("@@")]
        assert marker, proc.stderr
        loaded: list[Any] = json.loads(marker[0][2:])
        assert [m for m in loaded if m.split(".")[0] in heavy] == [], argv
