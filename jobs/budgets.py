"""Spending limits checked before any pod: what a budget is, what it has left, and the decision. Pure.

A budget caps the spend of its scope in a calendar period (UTC):

- scope ``global`` (every job), ``pool:<work pool>`` (GPU stages on that pool) or ``submitter:<name>``
  (jobs submitted with the tag ``submitter:<name>``, :mod:`jobs.tags`);
- period ``day`` (from 00:00 UTC), ``week`` (from Monday 00:00 UTC) or ``month`` (from the 1st);
- ``usd``: the most the scope may spend in one period.

Budgets live in the Prefect variable ``ow_budgets`` (a JSON list of such objects, editable in the UI
under Variables), read by the control tier (:mod:`tasks.budgets`) before it starts a GPU stage. Spend
is the pod charges of the ledger (:mod:`jobs.costs`) whose pod was created in the period, the figure
``ow costs`` reports. A job is refused when its estimate (:mod:`jobs.cost_estimate`) exceeds what is
left of any budget that covers it.

Pods still running have no charge yet, and jobs admitted together would each see the same money left;
so every admitted job holds its estimate (a :class:`BudgetHold`) until it ends, less what its pods have
been charged so far, and admission is one at a time (:mod:`tasks.budgets`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobs.cost_estimate import CostEstimate
from jobs.costs import PodCharge

BUDGETS_VARIABLE = "ow_budgets"
Period = Literal["day", "week", "month"]
SCOPE_KINDS = ("pool:", "submitter:")
EXAMPLE = '[{"name": "team", "scope": "global", "period": "month", "usd": 500}]'


class BudgetConfigError(ValueError):
    """The budgets variable cannot be read; the message names the variable, the entry and the field."""


class Budget(BaseModel):
    """At most ``usd`` dollars per ``period`` for the jobs in ``scope``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="What refusals and reports call the budget.")
    scope: str = Field(
        "global", description='"global", "pool:<work pool>" or "submitter:<name>": the jobs it covers.'
    )
    period: Period = Field(description="day, week (from Monday) or month, in UTC.")
    usd: float = Field(ge=0, allow_inf_nan=False, description="Dollars the scope may spend per period.")

    @field_validator("scope")
    @classmethod
    def _scope_form(cls, value: str) -> str:
        value = value.strip()
        if value == "global" or any(
            value.startswith(kind) and value[len(kind) :].strip() for kind in SCOPE_KINDS
        ):
            return value
        raise ValueError(f'{value!r} must be "global", "pool:<work pool name>" or "submitter:<name>"')

    def describe(self) -> str:
        return f"budget {self.name!r} ({self.scope}, ${self.usd:,.2f} per {self.period})"


def parse_budgets(value: Any, variable: str = BUDGETS_VARIABLE) -> list[Budget]:
    """The budgets held in the variable's value (a JSON list, or its text); unset or empty: none."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BudgetConfigError(
                f"Prefect variable {variable} is not JSON ({exc}); expected e.g. {EXAMPLE}"
            ) from None
    if not isinstance(value, list):
        raise BudgetConfigError(f"Prefect variable {variable} must be a JSON list of budgets, e.g. {EXAMPLE}")
    budgets: list[Budget] = []
    for index, entry in enumerate(value):
        label = f"Prefect variable {variable}, entry {index}"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label += f" ({entry['name']!r})"
        try:
            budget = Budget.model_validate(entry)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or "entry"
            message = error["msg"].removeprefix("Value error, ")
            raise BudgetConfigError(f"{label}: {field}: {message}") from None
        if any(other.name == budget.name for other in budgets):
            raise BudgetConfigError(
                f"{label}: name: {budget.name!r} is used by an earlier entry; names must differ"
            )
        budgets.append(budget)
    return budgets


def period_window(period: Period, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The calendar period holding ``now``, in UTC: [start, end)."""
    now = now.astimezone(dt.UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return start, start + dt.timedelta(days=1)
    if period == "week":
        start -= dt.timedelta(days=start.weekday())
        return start, start + dt.timedelta(days=7)
    start = start.replace(day=1)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def covers(scope: str, charge: PodCharge) -> bool:
    """Whether a charge counts against a budget of ``scope``."""
    if scope == "global":
        return True
    kind, _, name = scope.partition(":")
    return (charge.work_pool if kind == "pool" else charge.submitter) == name


class BudgetHold(BaseModel):
    """The estimate of a job admitted and not yet ended: money its pods may still cost."""

    job_id: str
    usd: float = Field(ge=0)
    work_pool: str | None = None
    submitter: str | None = None
    created_at: float = Field(description="Unix time the job was admitted.")


def covers_hold(scope: str, hold: BudgetHold) -> bool:
    """Whether a hold counts against a budget of ``scope`` (the rule :func:`covers` applies to charges)."""
    if scope == "global":
        return True
    kind, _, name = scope.partition(":")
    return (hold.work_pool if kind == "pool" else hold.submitter) == name


def held(holds: Iterable[BudgetHold], charges: Iterable[PodCharge]) -> list[BudgetHold]:
    """What each job still holds: its estimate less what its pods were charged so far (0 at least),
    one hold per job (identical submissions admit the same job twice)."""
    charged: dict[str, float] = {}
    for charge in charges:
        if charge.job_id:
            charged[charge.job_id] = charged.get(charge.job_id, 0.0) + charge.usd
    remaining: dict[str, BudgetHold] = {}
    for hold in holds:
        left = max(0.0, hold.usd - charged.get(hold.job_id, 0.0))
        if hold.job_id not in remaining or left > remaining[hold.job_id].usd:
            remaining[hold.job_id] = hold.model_copy(update={"usd": left})
    return list(remaining.values())


def spent(charges: Iterable[PodCharge], budget: Budget, now: dt.datetime) -> float:
    """What the budget's scope was charged for pods created in the period holding ``now``."""
    start, end = period_window(budget.period, now)
    return sum(
        charge.usd
        for charge in charges
        if covers(budget.scope, charge) and start.timestamp() <= charge.created_at < end.timestamp()
    )


def holding(
    holds: Iterable[BudgetHold], charges: Iterable[PodCharge], budget: Budget, now: dt.datetime
) -> float:
    """What the jobs of the budget's scope admitted in the period, and still running, hold (:func:`held`)."""
    start, end = period_window(budget.period, now)
    return sum(
        hold.usd
        for hold in held(holds, charges)
        if covers_hold(budget.scope, hold) and start.timestamp() <= hold.created_at < end.timestamp()
    )


def job_scopes(work_pool: str | None, submitter: str | None) -> set[str]:
    """The budget scopes a job falls in: global, its GPU work pool's, its submitter's."""
    return {
        "global",
        *([f"pool:{work_pool}"] if work_pool else []),
        *([f"submitter:{submitter}"] if submitter else []),
    }


class BudgetStatus(BaseModel):
    budget: Budget
    start: dt.datetime
    spent: float = Field(description="Charged for pods created in the period.")
    held: float = Field(0.0, description="Estimates still held by admitted jobs that have not ended.")
    left: float


def budget_status(
    budgets: Sequence[Budget],
    charges: Sequence[PodCharge],
    now: dt.datetime,
    holds: Sequence[BudgetHold] = (),
) -> list[BudgetStatus]:
    """Each budget with what its scope spent in the current period and what is left (0 at least)."""
    statuses = []
    for budget in budgets:
        used, reserved = spent(charges, budget, now), holding(holds, charges, budget, now)
        statuses.append(
            BudgetStatus(
                budget=budget,
                start=period_window(budget.period, now)[0],
                spent=used,
                held=reserved,
                left=max(0.0, budget.usd - used - reserved),
            )
        )
    return statuses


def decision(
    budgets: Sequence[Budget],
    charges: Sequence[PodCharge],
    estimate: CostEstimate,
    scopes: set[str],
    now: dt.datetime,
    holds: Sequence[BudgetHold] = (),
) -> str | None:
    """None when the job fits every budget covering it; else why it is refused (the first budget it
    exceeds: name, scope, period, spent, left, and the estimate with its basis)."""
    covering = [budget for budget in budgets if budget.scope in scopes]
    for status in budget_status(covering, charges, now, holds):
        if estimate.usd > status.left:
            budget = status.budget
            return (
                f"refused by {budget.describe()}: ${status.spent:,.2f} spent this {budget.period} "
                + (f"and ${status.held:,.2f} held by jobs still running " if status.held else "")
                + f"(since {status.start:%Y-%m-%d %H:%M} UTC), ${status.left:,.2f} left, but this job's estimated cost "
                f"is ${estimate.usd:,.2f} ({estimate.basis}). Raise the budget in the Prefect variable "
                f"{BUDGETS_VARIABLE}, or submit it in the next {budget.period}."
            )
    return None
