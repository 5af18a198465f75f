"""The launch form's plan pane: what the checked form would cost and create, or what to fix."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from dqlctl.tui.models.launch import Checked


class PlanView(Static):
    """Shows a ``Checked`` form: its cost estimate and ``runs.plan``'s steps."""

    def show(self, checked: Checked) -> None:
        """The cost (first: what the operator looks for), then the plan; or what to fix."""
        if checked.plan is None:
            self.update(Text("Fix the field marked above to see the plan.", style="dim"))
            return

        def grid() -> Table:
            table = Table.grid(padding=(0, 2))
            table.add_column(style="dim", no_wrap=True)
            table.add_column()
            return table

        parts: list[Any] = []
        if checked.errors:
            parts.append(Text("✗ Fix the fields marked above to launch.", style="bold red"))
        if checked.cost:  # first: what it costs is what the operator looks for
            cost = grid()
            cost.add_row(Text("Cost", style="bold"),
                         Text("price catalog; the estimate uses Hours (est.)", style="dim"))
            for key, value in checked.cost:
                cost.add_row(key, Text(value, style="bold" if key == "estimate" else ""))
            parts += [cost, Text("")]
        steps = grid()
        steps.add_row(Text("Plan", style="bold"), Text("what launch will do", style="dim"))
        for key, value in checked.plan.items():
            if value is not None:
                steps.add_row(key.replace("_", " "), str(value))
        parts.append(steps)
        self.update(Group(*parts))
