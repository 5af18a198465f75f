"""The launch form: checked through the core as the operator types; shows the plan; launches.

Fields, in tab order: provider (every compute provider, then auto), then the cloud rows, shown
only where the catalog prices the provider's instance types (``Capability.PRICES``, and auto):
region, instance type, spot, max cost (USD), hours (estimate); then data, agent type, command, episodes, name, engine flags. ``ctrl+l`` launches from anywhere;
the buttons sit below the scrolling form, so they stay in view at 80x24.

How it stays responsive (DESIGN.md, Style 8): nothing here waits on the event loop.

- Options: the Region and Instance type choices come from the price catalog
  (``models.offers.form_options``: the bundled CSV with the live-price cache laid over it,
  filtered and ranked by ``providers.prices.estimate.quote``), computed in a thread worker whenever the
  provider, the region or the market changes, and applied when they arrive. Measured (120x40,
  provider/spot/data changed 80 times in 6 s): 4-15 ms in the worker (50 ms at most, with
  first imports), 0.5-2.5 ms on the loop to swap up to ~170 options in; the loop's lag meanwhile
  p99 9-14 ms, against 7 ms (and a larger maximum) for typing alone on the local form.
- Instance types: one option per catalog type, cheapest first for the chosen market, labelled
  with its GPU, count, on-demand and spot $/h. With no region chosen the list is priced in the
  provider's default region once the plan names it (before that, and for ``auto``, which picks
  the region itself: the lowest price over the regions, marked "from"). Blank is the provider's
  default (T4 x1; ``auto``: the cheapest T4), as ``dqlctl launch`` without ``--instance-type``.
  A type the catalog does not list for the provider, or not in the region (kept when the region
  changes, or given in the initial values), stays selected, marked, with its error inline.
- Checking: ``models.launch.check_fields`` (the fields, ``runs.validate_request`` + ``runs.plan`` as
  ``dqlctl launch --dry-run``, the instance type against the catalog, the cost) then the cloud's
  ``check()`` for its credentials, both in the debounced check worker. The check answer is cached
  ``models.check.CHECK_TTL_S`` (``CheckCache``), so typing does not ask the cloud again; when it
  has to ask, the plan is posted first and the credentials after, so a slow cloud API never
  holds the plan back. Launch waits for a good answer.

The cost estimate: two figures. "Hours (est.)", 1 by default, feeds ``estimate(offer, hours)``
(spot interruptions included where the catalog knows their rate; egress left out: the data's
size is not known here). And, where the data is a local file, the run itself: its duration on
the planned machine from the nearest throughput profile and what it costs there
(``dqlctl.profiles.run_estimate``, the same lines as ``launch --dry-run``), with the profile's
provenance (measured on a CPU model, or a GPU guess said as such). The command "full-workflow,
tuning first" (``launch --tune``) shows both phases (the trials on the machine's vCPUs, then
the training) and a ``split`` row when tuning on another machine of the cloud is cheaper. With a
max cost the plan also
says how many hours that
budget buys at the offer's $/h, which is the figure the budget actually enforces.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.events import DescendantFocus, Resize
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static, Switch
from textual.worker import get_current_worker

from dqlctl import runs
from dqlctl.tui.messages import (
    FormChecked,
    LaunchDone,
    LaunchProgress,
    OptionsKey,
    OptionsReady,
)
from dqlctl.tui.models.check import CheckCache
from dqlctl.tui.models.common import one_line, worker_context
from dqlctl.tui.models.launch import (
    CLOUD_FIELDS,
    COMMAND_CHOICES,
    FORM_FIELDS,
    Checked,
    FormValues,
    build_request,
    check_credentials,
    check_fields,
    has_cloud_fields,
    tui_providers,
)
from dqlctl.tui.models.offers import FormOptions, form_options
from dqlctl.tui.screens.launch_plan import PlanView
from providers import AUTO

if TYPE_CHECKING:
    from dqlctl.tui.app import DqlApp

DEBOUNCE_S = 0.15
SPOT_TEXT = {True: "spot: cheaper, can be interrupted (the run resumes)",
             False: "on-demand: full price, never interrupted"}
SHORT_BELOW = (32, 44)  # rows under which the form drops its spacing: (local, cloud)
PROVIDER_LABELS = {AUTO: f"{AUTO} (the cheapest offer that fits)"}


def _provider_options() -> list[tuple[str, str]]:
    """Every compute provider and ``auto``; one the CLI names before its adapter lands is listed
    as such."""
    from providers import PLANNED_PROVIDERS

    usable = tui_providers()
    planned = sorted(set(PLANNED_PROVIDERS) - set(usable))
    return [(PROVIDER_LABELS.get(n, n), n) for n in usable] + \
        [(f"{n} (CLI only for now)", n) for n in planned]


class LaunchScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Cancel"),
        Binding("ctrl+l", "launch", "Launch", priority=True),
    ]

    def __init__(self, values: FormValues | None = None) -> None:
        super().__init__()
        self.initial = values or FormValues()
        self.checked: Checked | None = None
        self.launching = False
        self.launch_when_checked = False
        self.checks = CheckCache()
        self.options_timings: list[tuple[float, float]] = []   # (worker s, apply on the loop s)
        self._provider = self.initial.provider
        # choices to select once their options arrive (the initial values, for their provider)
        self._restore = {"region": self.initial.region,
                         "instance_type": self.initial.instance_type}
        self._options_want: OptionsKey | None = None
        self._options_have: OptionsKey | None = None
        self._regions_for: str | None = None
        self._default_region: dict[str, str] = {}      # provider -> the region its plan names
        self._creds: dict[str, str | None] = {}        # provider -> its last check's error
        self._options: FormOptions | None = None  # the ones applied, to relabel on resize
        self._label_width: int | None = None

    @property
    def dql(self) -> DqlApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        v = self.initial
        yield Header()
        with VerticalScroll(id="form"):
            yield Static(Text("Launch a run", style="bold"), id="form-title")
            yield from self._row("provider", "Provider",
                                 Select(_provider_options(), value=v.provider, allow_blank=False,
                                        id="provider", compact=True))
            yield from self._row("region", "Region", Select(
                [], prompt="provider default", id="region", compact=True))
            yield from self._row("instance_type", "Instance type", Select(
                [], prompt="provider default", id="instance_type", compact=True))
            yield from self._row("spot", "Spot", Switch(v.spot, id="spot"),
                                 Static(SPOT_TEXT[v.spot], id="spot-text"))
            yield from self._row("max_cost", "Max cost (USD)", Input(
                v.max_cost, placeholder="none (or: stop the run before it costs more)",
                id="max_cost", compact=True))
            yield from self._row("hours", "Hours (est.)", Input(
                v.hours, placeholder="how long you expect it to run (for the estimate)",
                id="hours", compact=True))
            yield from self._row("data", "Data", Input(
                v.data, placeholder="a CSV/Parquet path, a name under data/, or s3:// gs:// az://",
                id="data", compact=True))
            yield from self._row("agent_type", "Agent type", Select(
                [(a, a) for a in runs.AGENT_TYPES], value=v.agent_type, allow_blank=False,
                id="agent_type", compact=True))
            yield from self._row("command", "Command", Select(
                COMMAND_CHOICES, value=v.command, allow_blank=False,
                id="command", compact=True))
            yield from self._row("episodes", "Episodes", Input(
                v.episodes, type="integer", id="episodes", compact=True))
            yield from self._row("name", "Name", Input(
                v.name, placeholder="(from the data and the agent)", id="name", compact=True))
            yield from self._row("engine_flags", "Engine flags", Input(
                v.engine_flags, placeholder="e.g. --n_envs 4 --seed 3", id="engine_flags",
                compact=True))
            yield PlanView("", id="plan")
        with Horizontal(id="buttons"):
            yield Button("Launch  ^l", id="launch", variant="success", disabled=True,
                         compact=True)
            yield Button("Cancel  esc", id="cancel", compact=True)
        yield Footer()

    @staticmethod
    def _row(key: str, label: str, *widgets: Widget) -> ComposeResult:
        with Horizontal(classes="field", id=f"row-{key}"):
            yield Label(label, classes="field-label")
            yield from widgets
        yield Static("", classes="field-error", id=f"err-{key}")

    def on_resize(self, event: Resize) -> None:
        self._layout()
        self.call_after_refresh(self._relabel)

    def _relabel(self) -> None:
        """Instance type labels cut to the select's new width."""
        if self._options is not None and self._options_width() != self._label_width:
            self._apply_options(self._options)

    def _options_width(self) -> int | None:
        width = self.query_one("#instance_type", Select).content_size.width - 5  # scrollbar, padding
        return width if width >= 30 else None

    def _layout(self) -> None:
        """No spacing between the rows when they would push the plan out of sight."""
        self.set_class(self.size.height < SHORT_BELOW[has_cloud_fields(self._provider)], "-short")

    def on_mount(self) -> None:
        for key in FORM_FIELDS:
            self.query_one(f"#err-{key}").display = False
        self._show_cloud(self.initial.cloud)
        self.query_one("#data", Input).focus()
        self._request_options()
        self._check(self.values())

    # -- the fields -------------------------------------------------------------------------------

    def values(self) -> FormValues:
        def text(key: str) -> str:
            return self.query_one(f"#{key}", Input).value

        def choice(key: str) -> str:
            value = self.query_one(f"#{key}", Select).value
            return value if isinstance(value, str) else self._restore.get(key, "")

        return FormValues(provider=choice("provider"), data=text("data"),
                          agent_type=choice("agent_type"), command=choice("command"),
                          episodes=text("episodes"), name=text("name"),
                          engine_flags=text("engine_flags"), region=choice("region"),
                          instance_type=choice("instance_type"),
                          spot=self.query_one("#spot", Switch).value,
                          max_cost=text("max_cost"), hours=text("hours"))

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        """The focused field's label lights up (a class: ``:focus-within`` does not restyle the
        label when the focus moves on)."""
        for row in self.query(".field"):
            row.set_class(row in event.widget.ancestors_with_self, "-focused")

    def _show_cloud(self, cloud: bool) -> None:
        for key in CLOUD_FIELDS:
            self.query_one(f"#row-{key}").display = cloud
            if not cloud:
                self.query_one(f"#err-{key}").display = False

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Switch.Changed)
    def _changed(self, event: Input.Changed | Select.Changed | Switch.Changed) -> None:
        if not self.is_mounted:
            return
        control = event.control.id if event.control is not None else None
        if control == "provider":
            self._provider_changed()
        elif control == "spot":
            self.query_one("#spot-text", Static).update(SPOT_TEXT[bool(event.value)])
        self._request_options()
        self._check(self.values())

    def _provider_changed(self) -> None:
        provider = self.values().provider
        if provider == self._provider:
            return
        self._provider = provider
        self._restore = {}
        self._regions_for = None
        self._options_want = self._options_have = None
        self._options = None
        with self.prevent(Select.Changed):  # a new provider: its own regions and types
            for key in ("region", "instance_type"):
                select = self.query_one(f"#{key}", Select)
                select.set_options([])
                select.prompt = "provider default"
        self._show_cloud(has_cloud_fields(provider))
        self._layout()

    # -- the catalog's options (a worker) ---------------------------------------------------------

    def _options_key(self) -> OptionsKey | None:
        values = self.values()
        if not values.cloud:
            return None
        region = values.region or ("" if values.provider == AUTO
                                   else self._default_region.get(values.provider, ""))
        return values.provider, region, values.spot

    def _request_options(self) -> None:
        key = self._options_key()
        if key is None or key in (self._options_want, self._options_have):
            return
        self._options_want = key
        self._load_options(key)

    @work(thread=True, exclusive=True, group="options", exit_on_error=False)
    def _load_options(self, key: OptionsKey) -> None:
        start = time.perf_counter()
        options = form_options(*key, home=self.dql.ctx.home)
        self.post_message(OptionsReady(key, options, time.perf_counter() - start))

    def on_options_ready(self, message: OptionsReady) -> None:
        if message.key != self._options_want or message.key[0] != self._provider:
            return  # a newer request is on its way
        start = time.perf_counter()
        self._options_have = message.key
        self._apply_options(message.options)
        self.options_timings.append((message.elapsed_s, time.perf_counter() - start))
        self._request_options()  # a restored region changes what to price
        self._check(self.values())

    def _apply_options(self, options: FormOptions) -> None:
        self._options = options
        self._label_width = self._options_width()
        if self._label_width is None:  # not laid out yet: cut the labels once it is
            self.call_after_refresh(self._relabel)
        region = self.query_one("#region", Select)
        itype = self.query_one("#instance_type", Select)
        with self.prevent(Select.Changed):
            if self._regions_for != options.provider:
                self._regions_for = options.provider
                wanted = self._restore.pop("region", "") or ""
                choices: list[tuple[Any, str]] = list(options.regions)
                if wanted and wanted not in {v for _, v in choices}:
                    choices.append((Text(f"{wanted}  (no catalog prices)", style="yellow"),
                                    wanted))
                region.set_options(choices)
                if wanted:
                    region.value = wanted
                region.prompt = "any (the cheapest)" if options.provider == AUTO else \
                    self._region_prompt(options.provider)
            kept = itype.value if isinstance(itype.value, str) else \
                self._restore.pop("instance_type", "") or ""
            labels: list[tuple[Any, str]] = [  # one line each: narrow terminals cut the end
                (Text(label, no_wrap=True, overflow="ellipsis"), value)
                for label, value in options.labels(self._label_width)]
            if kept and kept not in {v for _, v in labels}:
                where = f"{options.provider} {options.region}" if options.region else \
                    options.provider
                labels.append((Text(f"{kept}  (not in the catalog for {where})",
                                    style="bold red"), kept))
            itype.set_options(labels)
            if kept:
                itype.value = kept

    def _region_prompt(self, provider: str) -> str:
        default = self._default_region.get(provider)
        return f"default: {default}" if default else "provider default"

    # -- checking as the operator types ----------------------------------------------------------

    @work(thread=True, exclusive=True, group="check", exit_on_error=False)
    def _check(self, values: FormValues) -> None:
        worker = get_current_worker()
        time.sleep(DEBOUNCE_S)  # a newer keystroke cancels this one before it runs
        if worker.is_cancelled:
            return
        with worker_context(self.dql.ctx) as ctx:
            checked = check_fields(ctx, values)
            if checked.target is not None and checked.credentials == "pending":
                if self.checks.fresh(checked.target) is None and not worker.is_cancelled:
                    self.post_message(FormChecked(checked))  # the plan now, credentials after
                checked = check_credentials(ctx, checked, self.checks)
        if not worker.is_cancelled:
            self.post_message(FormChecked(checked))

    def on_form_checked(self, message: FormChecked) -> None:
        checked = message.checked
        if checked.values != self.values() or self.launching:
            return  # the form changed since (a newer check is on its way), or it is launching
        self.checked = checked
        if checked.target is not None and checked.credentials in ("ok", "failed"):
            self._creds[checked.target] = checked.errors.get("provider")
        self._show_errors(checked)
        self._follow_plan(checked)
        self.query_one(PlanView).show(checked)
        self.query_one("#launch", Button).disabled = not checked.ok or self.launching
        if self.launch_when_checked and checked.credentials != "pending":
            self.launch_when_checked = False
            if checked.ok:
                self.action_launch()

    def _show_errors(self, checked: Checked) -> None:
        cloud = checked.values.cloud
        for key in FORM_FIELDS:
            err = self.query_one(f"#err-{key}", Static)
            row = self.query_one(f"#row-{key}")
            message = checked.errors.get(key)
            text: Text | None = Text(f"✗ {message}", style="bold red") if message else None
            if key == "provider" and message is None and checked.credentials == "pending":
                # the cloud is being asked: show its last answer meanwhile, or that it is asked
                last = self._creds.get(checked.target or "", "")
                text = (Text(f"… checking {checked.target} credentials", style="dim")
                        if last == "" else Text(f"✗ {last}", style="bold red") if last else None)
            if key in CLOUD_FIELDS and not cloud:
                text = None
            err.display = text is not None
            row.set_class(message is not None, "-invalid")
            if text is not None:
                err.update(text)

    def _follow_plan(self, checked: Checked) -> None:
        """What the plan resolved that the blank choices stand for: the default region (to price
        the instance types there) and the default instance type."""
        values, plan = checked.values, checked.plan
        if plan is None or not values.cloud or values.provider != self._provider:
            return
        if not values.instance_type and plan.get("instance_type"):
            self.query_one("#instance_type", Select).prompt = (
                f"cheapest T4: {plan['instance_type']}" if values.provider == AUTO
                else f"default: {plan['instance_type']}")
        region = plan.get("region")
        if values.provider != AUTO and not values.region and region \
                and self._default_region.get(values.provider) != region:
            self._default_region[values.provider] = str(region)
            self.query_one("#region", Select).prompt = self._region_prompt(values.provider)
            self._request_options()

    # -- launching --------------------------------------------------------------------------------

    @on(Button.Pressed, "#launch")
    def _launch_pressed(self) -> None:
        self.action_launch()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.app.pop_screen()

    def action_launch(self) -> None:
        checked = self.checked
        if self.launching:
            return
        if checked is None or checked.values != self.values() or checked.credentials == "pending":
            # typed faster than the check: launch once it says the form is good
            self.launch_when_checked = True
            self.query_one("#plan", Static).update(Text("checking ...", style="bold yellow"))
            return
        if not checked.ok:
            self.notify(f"fix the form first: {checked.error}", severity="warning", timeout=4)
            return
        self.launch_when_checked = False
        self.launching = True
        self.query_one("#launch", Button).disabled = True
        self.query_one("#plan", Static).update(Text("launching ...", style="bold yellow"))
        self._launch(checked.values)

    @work(thread=True, exclusive=True, group="launch", exit_on_error=False)
    def _launch(self, values: FormValues) -> None:
        """``runs.launch``, as `dqlctl launch` calls it. Teardown on failure is the core's."""
        try:
            req = build_request(values)
            with worker_context(self.dql.ctx) as ctx:
                run = runs.launch(ctx, req, on_state=lambda r: self.post_message(
                    LaunchProgress(r.id, r.state)))
        except Exception as exc:
            self.post_message(LaunchDone(None, one_line(exc)))
            return
        self.post_message(LaunchDone(run.id))

    def on_launch_progress(self, message: LaunchProgress) -> None:
        self.query_one("#plan", Static).update(
            Text(f"launching run {message.run_id}: {message.state}", style="bold yellow"))

    def on_launch_done(self, message: LaunchDone) -> None:
        self.launching = False
        if message.run_id is None:
            self.query_one("#plan", Static).update(
                Text(f"✗ launch failed: {message.error}", style="bold red"))
            self.query_one("#launch", Button).disabled = False
            return
        self.dql.launched(message.run_id)
