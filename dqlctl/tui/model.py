"""What the TUI shows, computed from the core (``dqlctl.runs``); no Textual here.

Screens render these records; workers compute them off the event loop. Keeping them free of
Textual lets the tests and the benchmark use them directly, and keeps "the core returns data, the
TUI renders it" (DESIGN.md, Style 1) honest: nothing here launches, stops or reconciles a run
except through ``dqlctl.runs``.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqlctl import registry as reg
from dqlctl import runs
from dqlctl.context import Context
from dqlctl.registry import Run

# The providers the launch form can start (``auto``: the cheapest priced offer picks the cloud).
TUI_PROVIDERS: tuple[str, ...] = ("local", "aws", "gcp", "azure", "auto")

STATE_STYLES: dict[str, str] = {
    reg.PENDING: "yellow",
    reg.PROVISIONING: "yellow",
    reg.BOOTSTRAPPING: "yellow",
    reg.RUNNING: "bold green",
    reg.COLLECTING: "cyan",
    reg.SUCCEEDED: "green",
    reg.FAILED: "bold red",
    reg.CANCELLED: "bright_black",
    reg.PREEMPTED: "magenta",
    reg.RECOVERING: "magenta",
}


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextmanager
def worker_context(base: Context) -> Iterator[Context]:
    """A Context for one worker thread: the same home, clock, config and provider table, its own
    SQLite connection (a connection may only be used by the thread that opened it)."""
    ctx = dataclasses.replace(base, _registry=None)
    try:
        yield ctx
    finally:
        ctx.close()


# -- the dashboard --------------------------------------------------------------------------------

# Most telling first: at 80 columns the table scrolls sideways for where the run is.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "NAME"), ("state", "STATE"), ("episode", "EPISODE"), ("sharpe", "VAL SHARPE"),
    ("elapsed", "ELAPSED"), ("cost", "COST"), ("where", "PROVIDER/REGION"),
    ("instance", "INSTANCE"), ("spot", "SPOT"),
)


@dataclass(frozen=True)
class RunRow:
    """One dashboard row: the run's fields as the table shows them."""

    id: str
    name: str
    where: str
    instance: str
    spot: str
    state: str
    episode: str
    sharpe: str
    elapsed: str
    cost: str
    terminal: bool
    reason: str | None = None

    def cells(self) -> tuple[str, ...]:
        return tuple(getattr(self, key) for key, _ in COLUMNS)

    def matches(self, needle: str) -> bool:
        """The ``/`` filter: a case-insensitive substring of the id or any shown field."""
        if not needle:
            return True
        hay = " ".join((self.id, *self.cells())).lower()
        return all(part in hay for part in needle.lower().split())


def elapsed_s(run: Run, now: float) -> float:
    start = run.started_at or run.created_at
    end = run.ended_at if run.ended_at is not None else now
    return max(0.0, end - start)


def _num(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def run_row(ctx: Context, run: Run, now: float) -> RunRow:
    sharpe = (run.progress or {}).get("val_sharpe")
    try:
        cost = runs.run_cost(ctx, run, now)
    except Exception:  # a price lookup that fails must not hide the run
        cost = run.cost_usd
    return RunRow(
        id=run.id, name=run.name,
        where=(f"{run.provider}/{run.region}" if run.region and run.region != run.provider
               else run.provider),
        instance=run.instance_type or (run.instance_ids[0] if run.instance_ids else "-"),
        spot="spot" if run.spot else "-", state=run.state, episode=runs.progress_text(run),
        sharpe=_num(sharpe, ".3f"), elapsed=runs.fmt_duration(elapsed_s(run, now)),
        cost=f"${cost:.2f}", terminal=run.terminal, reason=run.reason)


def dashboard_rows(ctx: Context, reconcile: bool = True) -> tuple[list[RunRow], list[str]]:
    """Every run, newest first, after bringing the live ones up to date; and what went wrong.

    Each live run is reconciled on its own (``runs.reconcile``, what ``dqlctl ps`` does through
    ``reconcile_all``) so that one provider that cannot be reached does not hide the others.
    """
    problems: list[str] = []
    if reconcile:
        for run in ctx.registry.list(include_terminal=False):
            try:
                runs.reconcile(ctx, run)
            except Exception as exc:
                problems.append(f"{run.name} ({run.id}): {one_line(exc)}")
    now = ctx.clock()
    return [run_row(ctx, run, now) for run in ctx.registry.list()], problems


# -- the run view ---------------------------------------------------------------------------------


@dataclass
class Equity:
    """The latest equity curves from ``equity`` events: the agent against buy-and-hold over the
    validation split (the best model so far) until the test split's arrive, which then stay."""

    split: str | None = None
    episode: int | None = None
    agent: list[float] = field(default_factory=list)
    buy_and_hold: list[float] = field(default_factory=list)

    def add(self, event: dict[str, Any]) -> bool:
        split = event.get("split")
        agent, bh = event.get("agent"), event.get("buy_and_hold")
        if split not in ("val", "test") or not isinstance(agent, list) or not agent:
            return False
        if self.split == "test" and split == "val":  # a resumed run's replay: keep the test
            return False
        self.split, self.episode = split, event.get("episode")
        self.agent = [float(x) for x in agent if isinstance(x, int | float)]
        self.buy_and_hold = ([float(x) for x in bh if isinstance(x, int | float)]
                             if isinstance(bh, list) else [])
        return True

    def title(self) -> str:
        if self.split is None:
            return "equity vs buy & hold"
        if self.split == "test":
            return "equity, test split"
        return f"equity, val split (episode {self.episode})" if self.episode else \
            "equity, val split"


@dataclass
class Curves:
    """Training curves from ``episode`` events, one point per episode."""

    reward: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_sharpe: list[float] = field(default_factory=list)
    episodes: int = 0
    last_episode: int = 0
    equity: Equity = field(default_factory=Equity)

    def add(self, event: dict[str, Any]) -> bool:
        if event.get("event") == "equity":
            return self.equity.add(event)
        if event.get("event") != "episode":
            return False
        episode = event.get("episode")
        if isinstance(episode, int):
            if episode <= self.last_episode:  # a resumed run replays nothing twice
                return False
            self.last_episode = episode
        if isinstance(event.get("episodes"), int):
            self.episodes = event["episodes"]
        for name in ("reward", "loss", "val_sharpe"):
            value = event.get(name)
            if isinstance(value, int | float):
                getattr(self, name).append(float(value))
        return True


def metrics_rows(run: Run) -> list[tuple[str, str]]:
    """The test metrics of a finished run, as (name, value) text."""
    test = (run.metrics or {}).get("test") or {}
    rows = []
    for key, value in test.items():
        if isinstance(value, float):
            rows.append((key, format(value, ".4g")))
        elif isinstance(value, int | str) or value is None:
            rows.append((key, "-" if value is None else str(value)))
    return rows


def report_path(run: Run) -> str | None:
    """Where the run's report.html is (a local path, or a URI to sync first); None before."""
    if not run.results_uri:
        return None
    uri = run.results_uri.rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        return f"{uri}/report.html"
    path = Path(uri.removeprefix("file://")) / "report.html"
    return str(path) if path.is_file() else None


@dataclass(frozen=True)
class RunInfo:
    """The run view's header line."""

    row: RunRow
    provider: str
    results_uri: str | None
    metrics: list[tuple[str, str]]
    report: str | None
    stage: str | None


def run_info(ctx: Context, run: Run) -> RunInfo:
    return RunInfo(row=run_row(ctx, run, ctx.clock()), provider=run.provider,
                   results_uri=run.results_uri, metrics=metrics_rows(run),
                   report=report_path(run) if run.terminal else None,
                   stage=(run.progress or {}).get("stage"))


# -- the launch form ------------------------------------------------------------------------------

# The form's rows that mean something only on a cloud (hidden for ``local``).
CLOUD_FIELDS: tuple[str, ...] = ("region", "instance_type", "spot", "max_cost", "hours")
# How long a provider's ``check()`` answer is reused: typing does not ask again, and a fix made in
# another terminal (``aws configure``, ``az login``) shows within this long.
CHECK_TTL_S = 10.0


@dataclass(frozen=True)
class FormValues:
    """The launch form's fields as typed (text), before anything is checked."""

    provider: str = "local"
    data: str = runs.LaunchRequest.data
    agent_type: str = runs.LaunchRequest.agent_type
    command: str = runs.LaunchRequest.command
    episodes: str = str(runs.LaunchRequest.episodes)
    name: str = ""
    engine_flags: str = ""
    # the cloud rows (ignored for local)
    region: str = ""            # "": the provider's default region (auto: any)
    instance_type: str = ""     # "": the provider's default (T4 x1); auto: the cheapest T4
    spot: bool = runs.LaunchRequest.spot
    max_cost: str = ""          # USD; "": no budget
    hours: str = "1"            # how long the operator expects it to run: the estimate only

    @property
    def cloud(self) -> bool:
        return self.provider != "local"


class FormError(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


def data_error(data: str) -> str | None:
    """What is wrong with a data location written as a URI; None for a path or a good URI.

    The engine reads ``s3://``, ``gs://``, ``az://`` and ``file://`` (``engine.paths``); the
    bucket must be named (``providers.storage.parse_uri``)."""
    if "://" not in data:
        return None
    from providers.layout import URI_SCHEMES
    from providers.storage import StorageError, parse_uri

    scheme = data.split("://", 1)[0]
    known = (*URI_SCHEMES, "file://")
    if f"{scheme}://" not in known:
        return (f"data: unknown scheme {scheme + '://'!r} in {data!r}: use "
                f"{', '.join(known)} or a local path")
    try:
        parse_uri(data)
    except StorageError as exc:
        return f"data: {exc}"
    return None


def _amount(text: str, field_name: str, what: str) -> float | None:
    """A positive number typed in a field ("" is None); FormError otherwise."""
    text = text.strip().removeprefix("$").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise FormError(field_name, f"{what} must be a positive number, got {text!r}")
    return value


def form_errors(values: FormValues) -> dict[str, str]:
    """Every field that cannot be read, in the form's order (field -> message)."""
    errors: dict[str, str] = {}
    if values.provider not in TUI_PROVIDERS:
        errors["provider"] = (f"{values.provider}: not available from the TUI; use "
                              f"`dqlctl launch --provider {values.provider} ...`")
    if values.cloud:
        for key, what in (("max_cost", "max cost (USD)"), ("hours", "hours (estimate)")):
            try:
                _amount(getattr(values, key), key, what)
            except FormError as exc:
                errors[key] = exc.message
    data = values.data.strip()
    if not data:
        errors["data"] = ("data: give a CSV or Parquet file (a path, a bare name under data/, "
                          "or a URI)")
    elif (problem := data_error(data)) is not None:
        errors["data"] = problem
    try:
        int(values.episodes.strip())
    except ValueError:
        errors["episodes"] = (f"episodes must be a whole number, got "
                              f"{values.episodes.strip()!r}")
    try:
        shlex.split(values.engine_flags)
    except ValueError as exc:
        errors["engine_flags"] = f"engine flags: {exc}"
    return errors


def build_request(values: FormValues) -> runs.LaunchRequest:
    """A launch request from the form, as ``dqlctl launch`` builds one from its flags; FormError
    names the first field at fault."""
    errors = form_errors(values)
    if errors:
        key, message = next(iter(errors.items()))
        raise FormError(key, message)
    cloud = values.cloud
    return runs.LaunchRequest(
        provider=values.provider, data=values.data.strip(), agent_type=values.agent_type,
        command=values.command, episodes=int(values.episodes.strip()),
        name=values.name.strip() or None, engine_args=shlex.split(values.engine_flags),
        region=(values.region.strip() or None) if cloud else None,
        instance_type=(values.instance_type.strip() or None) if cloud else None,
        spot=values.spot if cloud else runs.LaunchRequest.spot,
        max_cost=_amount(values.max_cost, "max_cost", "max cost") if cloud else None)


def error_field(message: str) -> str:
    """Which form field a ``runs.validate_request`` / ``runs.plan`` error is about."""
    text = message.lower()
    for needle, name in (("--provider auto", "instance_type"), ("credentials", "provider"),
                         ("max-cost", "max_cost"), ("provider", "provider"),
                         ("agent type", "agent_type"), ("engine command", "command"),
                         ("episodes", "episodes"), ("run name", "name"),
                         ("data file", "data"), ("az://", "data"), ("region", "region"),
                         ("instance", "instance_type"), ("machine", "instance_type"),
                         ("vm size", "instance_type"), ("gpu", "instance_type")):
        if needle in text:
            return name
    return "data"


# -- the catalog's offers, as the form's options

def _usd(price: float | None, unit: str = "") -> str:
    if price is None:
        return "n/a"
    return (f"${price:.3f}" if price < 10 else f"${price:.2f}") + unit


@dataclass(frozen=True)
class InstanceOption:
    """One instance type as the form offers it: its GPU and both prices from the catalog (the
    lowest over ``regions`` when the form is not filtered to one region)."""

    provider: str
    instance_type: str
    gpu: str
    gpu_count: int
    on_demand: float | None
    spot: float | None
    regions: tuple[str, ...]

    def price(self, spot: bool) -> float | None:
        return self.spot if spot else self.on_demand


@dataclass(frozen=True)
class FormOptions:
    """The Region and Instance type choices for one provider (and region, and market)."""

    provider: str
    region: str                         # the region the types are priced in; "" = all
    spot: bool
    regions: tuple[tuple[str, str], ...]            # (label, value), blank not included
    instances: tuple[InstanceOption, ...]           # cheapest first (for the market asked)

    def labels(self, width: int | None = None) -> list[tuple[str, str]]:
        """(label, instance type): the type, its GPU and count, its on-demand then its spot
        $/h, in aligned columns (``g4dn.xlarge  T4 x1  $0.526/h · spot $0.200/h``).

        Within ``width`` (the select's): narrower, "from" (the lowest over the regions) becomes
        "≥", then Azure's "Standard_" prefix goes, then the columns close up and "/h" goes; what
        still does not fit is cut with "…"."""
        if not self.instances:
            return []
        for level in range(4):
            lines = self._lines(level)
            if width is None or max(len(text) for text, _ in lines) <= width:
                return lines
        assert width is not None
        return [(text if len(text) <= width else text[:max(1, width - 1)] + "…", value)
                for text, value in lines]

    def _lines(self, level: int) -> list[tuple[str, str]]:
        def name(o: InstanceOption) -> str:
            itype = o.instance_type.removeprefix("Standard_") if level >= 2 else o.instance_type
            return f"{o.provider} {itype}" if self.provider == "auto" else itype

        names = [name(o) for o in self.instances]
        gpus = [f"{o.gpu} x{o.gpu_count}" for o in self.instances]
        lead = "" if self.region else ("from " if level == 0 else "≥")
        unit = "/h" if level < 3 else ""
        prices = [(f"{lead}{_usd(o.on_demand, unit)}", _usd(o.spot, unit))
                  for o in self.instances]
        w_name, w_gpu = max(map(len, names)), max(map(len, gpus))
        w_od, w_sp = (max(len(p[i]) for p in prices) for i in (0, 1))
        gap = " " if level >= 3 else "  "
        return [(f"{n:<{w_name}}{gap}{g:<{w_gpu}}{gap}{od:>{w_od}} · spot {sp:>{w_sp}}",
                 o.instance_type)
                for o, n, g, (od, sp) in zip(self.instances, names, gpus, prices, strict=True)]


def form_options(provider: str, region: str, spot: bool,
                 home: str | Path | None = None) -> FormOptions:
    """The catalog's regions and instance types for ``provider`` (``auto``: every cloud), the
    types filtered to ``region`` when the catalog prices that region, cheapest first for the
    market (spot or on-demand); GPU-only and retired rows left out, as ``dqlctl cost`` does."""
    from providers.prices.catalog import PROVIDERS, load_prices
    from providers.prices.estimate import PriceRequest, quote

    if provider not in (*PROVIDERS, "auto"):
        return FormOptions(provider, "", spot, (), ())
    prices = load_prices(home)
    clouds = PROVIDERS if provider == "auto" else (provider,)
    pairs = sorted({(r.provider, r.region) for r in prices.rows if r.provider in clouds})
    regions = tuple((f"{name}  ({cloud})" if provider == "auto" else name, name)
                    for cloud, name in pairs)
    if region not in {name for _, name in pairs}:
        region = ""  # not in the catalog: show what it has everywhere
    offers = quote(PriceRequest(provider=None if provider == "auto" else provider,
                                region=region or None, spot=spot), prices=prices).offers
    grouped: dict[tuple[str, str], list[Any]] = {}
    for offer in offers:
        grouped.setdefault((offer.provider, offer.instance_type), []).append(offer)

    def lowest(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return min(known) if known else None

    options = [InstanceOption(
        provider=cloud, instance_type=itype, gpu=group[0].gpu or "-",
        gpu_count=group[0].gpu_count, on_demand=lowest([o.extra["on_demand"] for o in group]),
        spot=lowest([o.extra["spot_price"] for o in group]),
        regions=tuple(sorted({o.region for o in group})))
        for (cloud, itype), group in grouped.items()]
    options.sort(key=lambda o: (o.price(spot) is None, o.price(spot) or 0.0, o.instance_type))
    return FormOptions(provider, region, spot, regions, tuple(options))


def instance_error(provider: str, instance_type: str, region: str | None,
                   rows: list[Any]) -> str | None:
    """An instance type the price catalog does not know for the provider, or not in the region
    (only where the catalog prices that region: elsewhere it cannot say)."""
    itype = instance_type.strip()
    if not itype:
        return None
    mine = [r for r in rows if r.provider == provider]
    have = [r for r in mine if r.instance_type.casefold() == itype.casefold()]
    if not have:
        return (f"unknown instance type {itype!r} for {provider}: not in the price catalog "
                f"(`dqlctl cost --provider {provider}` lists them; `dqlctl launch "
                "--instance-type` takes any type)")
    if region and any(r.region == region for r in mine) \
            and not any(r.region == region for r in have):
        where = ", ".join(sorted({r.region for r in have}))
        return f"{itype} is not offered in {provider} {region} (the catalog has it in {where})"
    return None


def cost_lines(req: runs.LaunchRequest, plan: dict[str, Any], hours: float | None,
               prices: Any) -> list[tuple[str, str]]:
    """The plan's cost estimate: both prices, ``estimate(offer, hours)`` (spot interruptions
    included where the catalog knows their rate) and what a ``--max-cost`` budget buys."""
    from providers.prices.catalog import CATALOG_AS_OF
    from providers.prices.estimate import PriceRequest, estimate, quote

    itype, region = plan.get("instance_type"), plan.get("region")
    if not itype or not region:
        return [("estimate", "unknown: no instance type or region to price")]
    found = quote(PriceRequest(provider=req.provider, instance_type=str(itype),
                               region=str(region), spot=req.spot), prices=prices).offers
    if not found or found[0].price_per_hour is None:
        what = "spot" if req.spot else "on-demand"
        return [("estimate", f"unknown: no {what} price for {itype} in {region} in the price "
                             "catalog")]
    offer = found[0]
    extra = offer.extra
    saving = f" (spot saves {extra['saving_pct']:.0f}%)" if extra.get("saving_pct") else ""
    source = (f"catalog {CATALOG_AS_OF}" if extra.get("price_source") == "catalog"
              else f"live {extra.get('price_as_of')}")
    lines = [("gpu", f"{offer.gpu} x{offer.gpu_count}, {offer.vcpus} vCPU, "
                     f"{offer.memory_gib:g} GiB"),
             ("$/h", f"on-demand {_usd(extra.get('on_demand'))} · spot "
                     f"{_usd(extra.get('spot_price'))}{saving}; {source}"
                     f"{', stale' if extra.get('stale') else ''}")]
    price = offer.price_per_hour
    market = "spot" if req.spot else "on-demand"
    if hours is not None:
        est = estimate(offer, hours)
        if req.spot and est.overhead_frac is None:
            extra_text = " (interruptions: rate unknown, not included)"
        elif req.spot and est.overhead_frac:
            share = f"~{est.overhead_frac:.1%}" if est.overhead_frac >= 0.001 else "<0.1%"
            extra_text = f" (incl. {share} redone after interruptions)"
        else:
            extra_text = ""
        lines.append(("estimate", f"~${est.total_usd:,.2f} for {hours:g} h {market} at "
                                  f"{_usd(price)}/h{extra_text}"))
    if req.max_cost is not None and price:
        lines.append(("budget buys", f"about {req.max_cost / price:,.1f} h at {_usd(price)}/h, "
                                     "then the run stops"))
    if extra.get("notes"):
        lines.append(("note", str(extra["notes"])))
    return lines


# -- credentials

class CheckCache:
    """Providers' ``check()`` answers, kept ``ttl_s``: typing does not ask again. One check per
    provider at a time: a second caller waits for the first's answer instead of asking too."""

    def __init__(self, ttl_s: float = CHECK_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._results: dict[str, tuple[float, Any]] = {}

    def fresh(self, name: str) -> Any | None:
        """The cached answer for ``name`` if it is still fresh, else None."""
        hit = self._results.get(name)
        if hit is not None and self.clock() - hit[0] < self.ttl_s:
            return hit[1]
        return None

    def get(self, ctx: Context, name: str) -> Any:
        """``ctx.provider(name).check()``, or its cached answer; a failure to check is a failed
        check (CheckResult)."""
        from providers.base import CheckItem, CheckResult

        with self._lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            result = self.fresh(name)
            if result is None:
                try:
                    result = ctx.provider(name).check()
                except Exception as exc:  # noqa: BLE001 - shown on the provider row
                    result = CheckResult(name, False, [CheckItem("check", False, one_line(exc))])
                self._results[name] = (self.clock(), result)
            return result


def credentials_error(result: Any) -> str | None:
    """A failed ``check()`` as the provider row shows it: each failing item and its fix."""
    if result.ok:
        return None
    bad = [item for item in result.items if not item.ok] or result.items
    return "\n".join(f"{result.provider}: {item.name}: {item.detail}"
                     + (f" (fix: {item.fix})" if item.fix else "") for item in bad)


@dataclass(frozen=True)
class Checked:
    """The form checked through the core: the plan to show (when the core could make one), its
    cost, and what is wrong, field by field. ``field``/``error`` are the first error."""

    values: FormValues
    plan: dict[str, Any] | None = None
    field: str | None = None
    error: str | None = None
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    cost: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    target: str | None = None          # the cloud whose credentials launch needs (auto: resolved)
    credentials: str = "n/a"           # n/a | pending | ok | failed

    @property
    def ok(self) -> bool:
        """Launch may go: a plan, no error, and the credentials known good (or not needed)."""
        return self.plan is not None and not self.errors and self.credentials in ("n/a", "ok")


def _checked(values: FormValues, errors: dict[str, str], **kw: Any) -> Checked:
    first = next(iter(errors.items()), (None, None))
    return Checked(values, field=first[0], error=first[1], errors=errors, **kw)


def check_fields(ctx: Context, values: FormValues) -> Checked:
    """Everything but the credentials: the fields, then ``runs.validate_request`` and
    ``runs.plan`` (exactly what ``launch --dry-run`` does), the instance type against the price
    catalog, and the cost. Cloud runs come back ``credentials="pending"``."""
    from dqlctl.errors import DqlctlError

    errors = form_errors(values)
    plan: dict[str, Any] | None = None
    cost: list[tuple[str, str]] = []
    target = values.provider if values.cloud and values.provider != "auto" else None
    if not errors:
        req = build_request(values)
        try:
            runs.validate_request(ctx, req)  # resolves --provider auto first
            plan = runs.plan(ctx, req)
        except DqlctlError as exc:
            errors[error_field(str(exc))] = str(exc)
        if req.provider not in ("local", "auto"):
            target = req.provider
        if plan is not None and target is not None:
            from providers.prices.catalog import load_prices

            prices = load_prices(ctx.home)
            region = plan.get("region")
            problem = instance_error(target, values.instance_type, str(region or ""),
                                     prices.rows) if values.provider != "auto" else None
            if problem:
                errors["instance_type"] = problem
            cost = cost_lines(req, plan, _amount(values.hours, "hours", "hours"), prices)
            if cost and cost[0][0] == "gpu":  # the catalog's, not the provider's default T4
                plan = {**plan, "gpu": cost.pop(0)[1]}
            if values.provider == "auto":
                market = "spot" if req.spot else "on-demand"
                plan = {"auto": f"picked {req.provider} {req.region} {req.instance_type}: the "
                                f"cheapest {market} offer that fits", **plan}
    return _checked(values, errors, plan=plan, cost=cost, target=target,
                    credentials="pending" if target else "n/a")


def check_credentials(ctx: Context, checked: Checked, checks: CheckCache) -> Checked:
    """``checked`` with its cloud's ``check()`` answer (cached): the failing items, with their
    fix, become the provider row's error."""
    if checked.target is None or checked.credentials != "pending":
        return checked
    problem = credentials_error(checks.get(ctx, checked.target))
    errors = dict(checked.errors)
    if problem:
        errors = {"provider": problem, **{k: v for k, v in errors.items() if k != "provider"}}
    return dataclasses.replace(_checked(checked.values, errors, plan=checked.plan,
                                        cost=checked.cost, target=checked.target),
                               credentials="failed" if problem else "ok")


def check_form(ctx: Context, values: FormValues, checks: CheckCache | None = None) -> Checked:
    """The whole check: ``check_fields`` then ``check_credentials`` (a fresh check unless a
    cache is given)."""
    return check_credentials(ctx, check_fields(ctx, values), checks or CheckCache(ttl_s=0))
