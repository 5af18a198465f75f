"""The cost screen's model: the price catalog's offers, cheapest first, and what the runs in the
registry have cost by month: the same figures as ``dqlctl cost --hours 10`` and ``dqlctl cost
--runs``, as text cells the screen's tables show in full.

Where a launch request is known (the cost screen opened from the launch form), the offers are
priced for that run instead: its duration on each (``providers.prices.profiles``, the nearest
throughput profile) and its cost, ranked by it, as ``dqlctl cost --episodes N --data FILE``
(a run that tunes first: both phases on one machine, as ``--phase all``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dqlctl.context import Context
from dqlctl.render import fmt_hours
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
# With a run: its duration and cost next to the $/h, ranked by the cost.
RUN_OFFER_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("cloud", "cloud", False), ("region", "region", False),
    ("instance_type", "instance type", False), ("gpu", "GPU", False),
    ("spot", "spot $/h", True), ("duration", "duration", True), ("estimate", "run cost", True),
    ("basis", "basis", False), ("on_demand", "on-demand $/h", True), ("vcpus", "vCPU", True),
)
SPEND_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("month", "month", False), ("provider", "provider", False), ("runs", "runs", True),
    ("hours", "instance-hours", True), ("cost", "cost", True),
)


@dataclass(frozen=True)
class CostView:
    """Both tables' rows (one text per column), and the catalog's warnings (stale prices...);
    ``run``: the run the offers are priced for (a line), ``notes``: where the durations come
    from."""

    offers: list[tuple[str, ...]]
    spend: list[tuple[str, ...]]
    warnings: list[str]
    columns: tuple[tuple[str, str, bool], ...] = OFFER_COLUMNS
    run: str | None = None
    notes: list[str] = field(default_factory=list)


def _basis(duration: dict[str, Any]) -> str:
    pm = duration.get("plus_minus")
    short = {"measured": "measured", "nearest": "nearest", "cpu-other": "CPU profile",
             "gpu-guess": "guess"}.get(duration.get("basis", ""), "n/a")
    return short + (f" ±{pm:.0%}" if pm is not None else "")


def on_demand_priced(offer: Any) -> bool:
    """A spot request priced at on-demand: the spot price of that row is not known."""
    return str(offer.extra.get("priced_at", "")).startswith("on-demand (")


def cost_view(ctx: Context, request: Any = None) -> CostView:
    """Every priced spot offer for ``HOURS`` of work, cheapest first, and the runs' spend; for
    the run of ``request`` (a ``runs.LaunchRequest``) when one is given and its data is local."""
    from dqlctl.runs import spend_by_month
    from providers.prices.estimate import PriceRequest, gpu_label, quote

    shape, warnings = None, []
    if request is not None:
        from dqlctl.profiles import ShapeError, launch_shape

        try:
            shape = launch_shape(request)
        except ShapeError as exc:
            warnings.append(f"priced per hour: the run's length is unknown ({exc})")
    phase = "all" if shape is not None and shape.trials else "train"   # tuning, then training
    q = quote(PriceRequest(hours=HOURS, spot=True, run=shape, phase=phase), home=ctx.home)
    offers = []
    notes: dict[str, list[str]] = {}
    for o in q.offers:
        if o.price_per_hour is None:
            continue
        x = o.extra
        saving = x.get("saving_pct")
        est = (x.get("estimate") or {}).get("total_usd")
        duration = x.get("duration") or {}
        if duration:
            notes.setdefault(duration["provenance"], []).append(o.gpu or "CPU")
        cells = {"cloud": o.provider, "region": o.region, "instance_type": o.instance_type,
                 "gpu": gpu_label(o.gpu, o.gpu_count),
                 "spot": usd(x.get("spot_price")),
                 "estimate": ((f"${est:,.4f}" if shape is not None and est < 1 else
                               f"${est:,.2f}") + ("°" if on_demand_priced(o) else ""))
                 if est is not None else "-",
                 "duration": fmt_hours(duration.get("hours")),
                 "basis": _basis(duration),
                 "on_demand": usd(x.get("on_demand")),
                 "save": f"{saving:.0f}%" if saving is not None else "-",
                 "vcpus": str(o.vcpus) if o.vcpus else "-"}
        columns = RUN_OFFER_COLUMNS if shape is not None else OFFER_COLUMNS
        offers.append(tuple(cells[key] for key, _, _ in columns))
    spend = [(row["month"], row["provider"], str(row["runs"]), f"{row['instance_hours']:.2f}",
              f"${row['cost_usd']:.2f}") for row in spend_by_month(ctx, ctx.clock())]
    run = None
    lines: list[str] = []
    if shape is not None:
        sizes = "-".join(map(str, shape.hidden_sizes))
        run = (f"{shape.episodes} episodes of {shape.data} ({shape.env_steps:,} env steps), "
               f"{shape.agent_type} {sizes}, batch {shape.batch_size}, {shape.n_envs} envs")
        if shape.trials:
            run = (f"{shape.trials} tuning trials x {shape.trial_episodes} episodes on the "
                   f"vCPUs, then {run}")
        lines = [f"duration ({', '.join(dict.fromkeys(kinds))}): {text}"
                 for text, kinds in notes.items()]
    if any(on_demand_priced(o) for o in q.offers):
        lines.append("° spot price unknown: priced at on-demand (an upper bound)")
    return CostView(offers, spend, [*warnings, *q.warnings],
                    RUN_OFFER_COLUMNS if shape is not None else OFFER_COLUMNS, run, lines)
