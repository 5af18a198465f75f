"""The cost screen's model: the price catalog's GPU offers, cheapest first, and what the runs in
the registry have cost by month: the same figures as ``dqlctl cost --hours 10`` and
``dqlctl cost --runs``, as text cells the screen's tables show in full."""

from __future__ import annotations

from dataclasses import dataclass

from dqlctl.context import Context
from dqlctl.tui.models.common import usd

HOURS = 10.0  # the work the estimate column prices (spot interruptions included)

# (key, heading, right-aligned). At 120 columns every one fits; at 80 the table scrolls sideways
# and shows up to the spot price first (what the offers are ranked by).
OFFER_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("cloud", "cloud", False), ("region", "region", False),
    ("instance_type", "instance type", False), ("gpu", "GPU", False),
    ("spot", "spot $/h", True), ("estimate", f"est. {HOURS:g} h", True),
    ("on_demand", "on-demand $/h", True), ("save", "saves", True), ("vcpus", "vCPU", True),
)
SPEND_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("month", "month", False), ("provider", "provider", False), ("runs", "runs", True),
    ("hours", "instance-hours", True), ("cost", "cost", True),
)


@dataclass(frozen=True)
class CostView:
    """Both tables' rows (one text per column), and the catalog's warnings (stale prices...)."""

    offers: list[tuple[str, ...]]
    spend: list[tuple[str, ...]]
    warnings: list[str]


def cost_view(ctx: Context) -> CostView:
    """Every priced spot offer for ``HOURS`` of work, cheapest first, and the runs' spend."""
    from dqlctl.runs import spend_by_month
    from providers.prices.estimate import PriceRequest, quote

    q = quote(PriceRequest(hours=HOURS, spot=True), home=ctx.home)
    offers = []
    for o in q.offers:
        if o.price_per_hour is None:
            continue
        x = o.extra
        saving = x.get("saving_pct")
        est = (x.get("estimate") or {}).get("total_usd")
        cells = {"cloud": o.provider, "region": o.region, "instance_type": o.instance_type,
                 "gpu": f"{o.gpu} x{o.gpu_count}", "spot": usd(o.price_per_hour),
                 "estimate": f"${est:,.2f}" if est is not None else "-",
                 "on_demand": usd(x.get("on_demand")),
                 "save": f"{saving:.0f}%" if saving is not None else "-",
                 "vcpus": str(o.vcpus) if o.vcpus else "-"}
        offers.append(tuple(cells[key] for key, _, _ in OFFER_COLUMNS))
    spend = [(row["month"], row["provider"], str(row["runs"]), f"{row['instance_hours']:.2f}",
              f"${row['cost_usd']:.2f}") for row in spend_by_month(ctx, ctx.clock())]
    return CostView(offers, spend, list(q.warnings))
