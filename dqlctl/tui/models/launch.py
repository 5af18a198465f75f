"""The launch form's model: the fields as typed, what is wrong with each, and the form checked
through the core (``runs.validate_request`` + ``runs.plan``, as ``dqlctl launch --dry-run``)."""

from __future__ import annotations

import dataclasses
import functools
import math
import shlex
from dataclasses import dataclass
from typing import Any

from dqlctl import runs
from dqlctl.context import Context
from dqlctl.tui.models.check import CheckCache, credentials_error
from dqlctl.tui.models.offers import cost_lines, instance_error
from providers import AUTO, DEFAULT_PROVIDER
from providers.base import Capability

# The form's rows, in tab order.
FORM_FIELDS: tuple[str, ...] = ("provider", "region", "instance_type", "spot", "max_cost", "hours",
                                "data", "agent_type", "command", "episodes", "name",
                                "engine_flags")
# The command row's choices: the engine commands launch runs, and full-workflow with its tuning
# stage first (``launch --tune``): (label, value).
TUNED = "full-workflow --tune"
COMMAND_CHOICES: tuple[tuple[str, str], ...] = (
    *((c, c) for c in runs.ENGINE_COMMANDS), ("full-workflow, tuning first", TUNED))
# The form's rows that mean something only where instance types are priced (a cloud, or auto).
CLOUD_FIELDS: tuple[str, ...] = ("region", "instance_type", "spot", "max_cost", "hours")


def tui_providers() -> tuple[str, ...]:
    """The providers the launch form can start: the default first, then every other compute
    provider, then ``auto`` (the cheapest priced offer picks the cloud)."""
    from providers import provider_names

    names = provider_names()
    return (*(n for n in names if n == DEFAULT_PROVIDER),
            *(n for n in names if n != DEFAULT_PROVIDER), AUTO)


@functools.cache
def has_cloud_fields(provider: str) -> bool:
    """Region, instance type, spot, prices mean something for ``provider``: it is priced in the
    catalog (``Capability.PRICES``), or it is ``auto``, which picks a priced one."""
    from providers import capabilities_of

    return provider == AUTO or Capability.PRICES in capabilities_of(provider)


@dataclass(frozen=True)
class FormValues:
    """The launch form's fields as typed (text), before anything is checked."""

    provider: str = DEFAULT_PROVIDER
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
        return has_cloud_fields(self.provider)


class FormError(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


def data_error(data: str) -> str | None:
    """What is wrong with a data location written as a URI; None for a path or a good URI.

    The engine reads ``s3://``, ``gs://``, ``az://`` and ``file://`` (``providers.layout``); the
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
    if values.provider not in tui_providers():
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
        command="full-workflow" if values.command == TUNED else values.command,
        tune=values.command == TUNED, episodes=int(values.episodes.strip()),
        name=values.name.strip() or None, engine_args=shlex.split(values.engine_flags),
        region=(values.region.strip() or None) if cloud else None,
        instance_type=(values.instance_type.strip() or None) if cloud else None,
        spot=values.spot if cloud else runs.LaunchRequest.spot,
        max_cost=_amount(values.max_cost, "max_cost", "max cost") if cloud else None)


# A launch-request field the form shows under another row's name.
FIELD_ROWS = {"engine_args": "engine_flags", "gpu": "instance_type"}


def error_field(exc: BaseException) -> str:
    """The form row a ``runs.validate_request`` / ``runs.plan`` error is about: the ``field`` the
    error carries (``UsageError``, ``ProviderError``), or the one carried by the error it was
    raised from (``runs`` turns a ``ProviderError`` into a ``ProviderFailure``). Without one: a
    provider's error goes on the provider row, anything else on the data row."""
    from dqlctl.errors import ProviderFailure
    from providers.base import ProviderError

    for err in (exc, exc.__cause__ or exc.__context__):
        name = getattr(err, "field", None)
        if isinstance(name, str) and name:
            name = FIELD_ROWS.get(name, name)
            if name in FORM_FIELDS:
                return name
    return "provider" if isinstance(exc, ProviderFailure | ProviderError) else "data"


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
    target = values.provider if values.cloud and values.provider != AUTO else None
    if not errors:
        req = build_request(values)
        try:
            runs.validate_request(ctx, req)  # resolves --provider auto first
            plan = runs.plan(ctx, req)
        except DqlctlError as exc:
            errors[error_field(exc)] = str(exc)
        if req.provider != AUTO and has_cloud_fields(req.provider):
            target = req.provider  # auto: the cloud it resolved to
        if plan is not None and target is not None:
            from providers.prices.catalog import load_prices

            prices = load_prices(ctx.home)
            region = plan.get("region")
            problem = instance_error(target, values.instance_type, str(region or ""),
                                     prices.rows) if values.provider != AUTO else None
            if problem:
                errors["instance_type"] = problem
            cost = cost_lines(req, plan, _amount(values.hours, "hours", "hours"), prices)
            cost += run_lines(ctx, req, plan, prices)
            if cost and cost[0][0] == "gpu":  # the catalog's, not the provider's default T4
                plan = {**plan, "gpu": cost.pop(0)[1]}
            if values.provider == AUTO:
                market = "spot" if req.spot else "on-demand"
                plan = {AUTO: f"picked {req.provider} {req.region} {req.instance_type}: the "
                                f"cheapest {market} offer that fits", **plan}
    return _checked(values, errors, plan=plan, cost=cost, target=target,
                    credentials="pending" if target else "n/a")


def run_lines(ctx: Context, req: runs.LaunchRequest, plan: dict[str, Any],
              prices: Any) -> list[tuple[str, str]]:
    """The run's duration and cost on the planned machine, after its $/h
    (``dqlctl.profiles.run_estimate``, as ``launch --dry-run``)."""
    from dqlctl.profiles import run_estimate

    return list(run_estimate(ctx.home, req, plan, prices=prices).items())


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
