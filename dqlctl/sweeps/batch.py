"""The AWS Batch backend (``--provider aws-batch``, or ``--backend batch``): the queue backend
(``dqlctl.sweeps.queue``) over the ``aws-batch`` provider, each member an ordinary run whose job
is an AWS Batch job (providers/aws/batch.py).

Batch queues the jobs itself and starts a spot machine per job as capacity allows, so the default
concurrency (members submitted at once) is high: the compute environment's vCPU limit is what
bounds the machines. Members get no ``--torch_threads 1``: each has a machine of its own.
"""

from __future__ import annotations

from typing import Any

from dqlctl.context import Context
from dqlctl.registry_sweeps import Sweep
from dqlctl.sweeps.queue import pump
from dqlctl.sweeps.spec import MemberPlan, SweepSpec

#: members submitted at once unless the spec says
BATCH_CONCURRENCY = 100


class BatchBackend:
    """Members as AWS Batch jobs: one job per member, with its own parameters."""

    name = "aws-batch"
    member_engine_args: tuple[str, ...] = ()

    def default_concurrency(self, ctx: Context) -> int:
        return BATCH_CONCURRENCY

    def plan(self, ctx: Context, spec: SweepSpec, members: list[MemberPlan]) -> dict[str, Any]:
        """Where the members go (the first member's plan: they share queue, compute
        environment and job definition) and the spot price of them all running at once."""
        from dqlctl.errors import ProviderFailure
        from dqlctl.runs.request import LaunchRequest, build_spec
        from providers.base import ProviderError

        provider = ctx.provider(self.name)
        first = build_spec(ctx, LaunchRequest(**members[0].request), "dry-run")
        try:
            where = provider.plan(first)
            price = provider.offers(first)[0].price_per_hour
        except ProviderError as exc:
            raise ProviderFailure(str(exc), field=exc.field) from None
        at_once = min(len(members), spec.concurrency or BATCH_CONCURRENCY)
        return {
            "where": f"AWS Batch: queue {where['queue']} in {where['region']}, one job per "
                     f"member; compute environment {where['compute_environment']}; job "
                     f"definition {where['job_definition']}; results {where['results']}",
            "cost": (f"${price:.4f}/h per running member ({where['instance_type']} spot, "
                     f"catalog); ${price * at_once:.2f}/h with {at_once} running at once"
                     if price is not None else "unknown (the instance type is not in the "
                     "price catalog)")}

    def pump(self, ctx: Context, sweep: Sweep) -> list[str]:
        return pump(ctx, sweep)
