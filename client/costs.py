"""``ow.costs``: what GPU pods cost, from the cost ledger in Prefect, and what the budgets have left.

    ow = OpenWeights()
    for row in ow.costs.report(by="job_type", since="7d"):
        print(row.group, row.usd, row.pods, row.jobs, row.gpu_hours)
    ow.costs.charges(since="2025-06-01")      # one PodCharge per pod
    ow.costs.budgets()                        # each budget with its spend and what is left
    ow.costs.set_budget(Budget(name="team", scope="global", period="month", usd=500))

A charge belongs to the day its pod was created (UTC), in reports and budgets alike. On the embedded
default (a process pool for the GPU stage) nothing is rented, nothing is charged, and budgets are inert:
:meth:`Costs.gpu_is_local` says so.
"""

from __future__ import annotations

import datetime as dt
import re

from jobs.budgets import BUDGETS_VARIABLE, Budget, BudgetStatus, budget_status
from jobs.costs import GROUP_BY_CHOICES, CostRow, PodCharge, cost_report

LOCAL_MESSAGE = "no GPU spend recorded: jobs on the local process pool cost nothing"
_DAYS = re.compile(r"(\d+)d")

When = dt.datetime | dt.date | str | None


def parse_when(
    value: When, field: str, now: dt.datetime | None = None, *, end_of_day: bool = False
) -> dt.datetime | None:
    """A point in time from ``YYYY-MM-DD`` (midnight UTC, or the next midnight with ``end_of_day``),
    ``<N>d`` (N days before now), a date or a datetime (naive means UTC). Errors name ``field``."""
    if value is None or isinstance(value, dt.datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        day = value
    else:
        text = value.strip()
        days = _DAYS.fullmatch(text)
        if days:
            return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=int(days[1]))
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{field} {value!r} is not a date: give YYYY-MM-DD (UTC) or a number of days back such as 7d"
            ) from None
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return start + dt.timedelta(days=1) if end_of_day else start


class Costs:
    """``ow.costs``: spend by day, deployment, job type, model, submitter or job, and budgets."""

    def charges(self, since: When = None, until: When = None) -> list[PodCharge]:
        """Every pod charge whose pod was created from ``since`` up to the end of ``until`` (a date
        includes its whole day), oldest first."""
        from prefect.client.orchestration import get_client

        from tasks.cost_ledger import read_charges

        start = parse_when(since, "since")
        end = parse_when(until, "until", end_of_day=True)
        with get_client(sync_client=True) as client:
            charges = read_charges(client)
        kept = [
            charge
            for charge in charges
            if (start is None or charge.created_at >= start.timestamp())
            and (end is None or charge.created_at < end.timestamp())
        ]
        return sorted(kept, key=lambda charge: (charge.created_at, charge.pod_id))

    def report(self, by: str = "job_type", since: When = None, until: When = None) -> list[CostRow]:
        """Spend grouped ``by`` one of day, deployment, job_type, model, submitter, job; biggest first."""
        if by not in GROUP_BY_CHOICES:
            raise ValueError(f"by {by!r} is not a grouping; use one of {', '.join(GROUP_BY_CHOICES)}")
        return cost_report(self.charges(since, until), by)  # type: ignore[arg-type]

    def budgets(self, now: dt.datetime | None = None) -> list[BudgetStatus]:
        """The budgets of the Prefect variable ``ow_budgets``, each with its spend this period, what jobs
        still running hold of it, and what is left."""
        from prefect.client.orchestration import get_client

        from tasks.budgets import load_budgets
        from tasks.cost_ledger import read_holds

        budgets = load_budgets()
        if not budgets:
            return []
        with get_client(sync_client=True) as client:
            holds = read_holds(client)
        return budget_status(budgets, self.charges(), now or dt.datetime.now(dt.UTC), holds)

    def gpu_is_local(self) -> bool:
        """True when no ``gpu-stage`` deployment runs on a ``runpod`` pool: nothing is rented or charged,
        and budgets are inert."""
        from prefect.client.orchestration import get_client

        from tasks.budgets import BILLED_POOL_TYPE, gpu_work_pools

        with get_client(sync_client=True) as client:
            pools = gpu_work_pools(client)
        return bool(pools) and all(pool.type != BILLED_POOL_TYPE for pool in pools)

    def set_budget(self, budget: Budget) -> list[Budget]:
        """Add ``budget`` to the Prefect variable ``ow_budgets``, replacing one of the same name."""
        from tasks.budgets import load_budgets

        kept = [other for other in load_budgets() if other.name != budget.name]
        return _save_budgets([*kept, budget])

    def remove_budget(self, name: str) -> list[Budget]:
        """Remove the budget called ``name`` from ``ow_budgets`` (LookupError when there is none)."""
        from tasks.budgets import load_budgets

        budgets = load_budgets()
        kept = [budget for budget in budgets if budget.name != name]
        if len(kept) == len(budgets):
            raise LookupError(f"no budget named {name!r} in the Prefect variable {BUDGETS_VARIABLE}")
        return _save_budgets(kept)


def _save_budgets(budgets: list[Budget]) -> list[Budget]:
    from prefect.variables import Variable

    Variable.set(BUDGETS_VARIABLE, [budget.model_dump(mode="json") for budget in budgets], overwrite=True)
    return budgets
