"""The cost screen's model: the price catalog's GPU offers, cheapest first, and what the runs in
the registry have cost by month: the same figures as ``dqlctl cost --hours 10`` and
``dqlctl cost --runs``, as text cells the screen's tables show in full."""

from __future__ import annotations

from dataclasses import dataclass

from dqlctl.context import Context
from dqlctl.tui.models.common import usd

HOURS = 10.0  # the work the estimate column prices (spot interruptions included)

# (key, heading, right-aligned)
OFFER_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("cloud", "cloud", False), ("region", "region", False),
    ("instance_type", "instance type", False), ("gpu", "GPU", False),
    ("vcpus", "vCPU", True), ("memory", "memory", True),
    ("on_demand", "on-demand $/h", True), ("spot", "spot $/h", True), ("save", "spot saves", True),
    ("estimate", f"est. {HOURS:g} h spot", True),
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
    from dqlctl.cost_cmd import spend_by_month
    from providers.prices.estimate import PriceRequest, quote

    q = quote(PriceRequest(hours=HOURS, spot=True), home=ctx.home)
    offers = []
    for o in q.offers:
        if o.price_per_hour is None:
            continue
        x = o.extra
        saving = x.get("saving_pct")
        est = (x.get("estimate") or {}).get("total_usd")
        offers.append((o.provider, o.region, o.instance_type, f"{o.gpu} x{o.gpu_count}",
                       str(o.vcpus) if o.vcpus else "-",
                       f"{o.memory_gib:g} GiB" if o.memory_gib else "-",
                       usd(x.get("on_demand")), usd(o.price_per_hour),
                       f"{saving:.0f}%" if saving is not None else "-",
                       f"${est:,.2f}" if est is not None else "-"))
    spend = [(row["month"], row["provider"], str(row["runs"]), f"{row['instance_hours']:.2f}",
              f"${row['cost_usd']:.2f}") for row in spend_by_month(ctx, ctx.clock())]
    return CostView(offers, spend, list(q.warnings))
