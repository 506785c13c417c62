"""What a job cost: one charge per pod, summed per job, grouped for reports. Pure: no Prefect, no I/O.

The RunPod worker writes one :class:`PodCharge` per pod it launched: an *open* charge as soon as the
pod exists (no ``ended_at`` yet), and the closed one once the pod is gone (price at launch × seconds
from create to terminate, and RunPod's own billed figure where its billing endpoint answers). A pod
whose worker died is closed by whichever worker of the pool later finds it (``ended_by`` says how its
end was known). An open charge counts up to the time it was read (``as_of``), never past the pod's
bound (``bound_at``). The control tier sums the charges of every GPU-stage attempt of a job into a
:class:`JobCost` (recoveries included) and stores it in the job's result record. ``ow costs`` groups
charges by day, deployment, job type, model or submitter. Where the ledger lives (a Prefect artifact
per pod) is :mod:`tasks.cost_ledger`'s business, not this module's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, Field

GroupBy = Literal["day", "deployment", "job_type", "model", "submitter", "job"]
# How a closed charge's end was known: "worker" (the worker watching the pod saw it gone or terminated
# it), "sweep" (an orphan sweep terminated it), or, for a pod found gone while no worker watched it,
# "billing" (the end RunPod's bill implies at the launch price), "flow_run_end" (its GPU-stage run's
# end: the pod's entrypoint ends the pod then) or "bound" (nothing said more: the pod's bound).
EndedBy = Literal["worker", "sweep", "billing", "flow_run_end", "bound"]
GROUP_BY_CHOICES: tuple[str, ...] = ("day", "deployment", "job_type", "model", "submitter", "job")


class PodCharge(BaseModel):
    """The cost of one pod: what the worker measured, and what RunPod billed if it said; open (no
    ``ended_at``) while the pod may still run."""

    pod_id: str
    flow_run_id: str = Field(description="The GPU-stage flow run the pod ran.")
    job_id: str | None = None
    job_type: str | None = None
    deployment: str | None = Field(None, description="The deployment the job was submitted through.")
    model: str | None = None
    submitter: str | None = None
    work_pool: str | None = None
    gpu_type_id: str | None = None
    gpu_count: int = 1
    cloud: str | None = None
    price_per_hour: float | None = Field(None, description="USD per hour for the whole pod, at launch.")
    created_at: float = Field(description="Unix time the pod was created.")
    ended_at: float | None = Field(
        description="Unix time the pod was seen gone (or terminated); None while the charge is open."
    )
    billed_usd: float | None = Field(None, description="RunPod's billed total for the pod, when it answered.")
    bound_at: float | None = Field(
        None,
        description=(
            "Unix time by which the pod ends at the latest, as launched: created + max_run_hours, else + "
            "ttl_hours (a TTL extended inside the pod can outlast it). An open charge counts no further."
        ),
    )
    as_of: float | None = Field(
        None, description="An open charge counts up to this Unix time (its reader's now); unused once closed."
    )
    ended_by: EndedBy | None = Field(
        None, description="How the end was known (None: open, or recorded before)."
    )

    @property
    def is_open(self) -> bool:
        """The pod may still run: nobody has yet recorded its end."""
        return self.ended_at is None

    @property
    def counted_until(self) -> float:
        """Where the charge's time ends: its end, or for an open charge ``as_of`` capped at its bound."""
        if self.ended_at is not None:
            return self.ended_at
        until = self.created_at if self.as_of is None else self.as_of
        return until if self.bound_at is None else min(until, self.bound_at)

    @property
    def seconds(self) -> float:
        return max(0.0, self.counted_until - self.created_at)

    def at(self, now: float) -> PodCharge:
        """The charge as of ``now`` (Unix time): an open one counts up to it; a closed one is unchanged."""
        return self.model_copy(update={"as_of": now}) if self.is_open else self

    @property
    def measured_usd(self) -> float | None:
        """Price at launch × seconds alive; None when the price was unknown."""
        return None if self.price_per_hour is None else self.price_per_hour * self.seconds / 3600

    @property
    def usd(self) -> float:
        """The figure reports use: RunPod's bill when it gave one, else our measurement, else 0."""
        if self.billed_usd is not None:
            return self.billed_usd
        return self.measured_usd or 0.0


class JobCost(BaseModel):
    """A job's cost over all its GPU-stage attempts; stored as ``cost`` in its result record."""

    usd: float = 0.0
    billed: bool = Field(False, description="True when the job ran on billed pods (not the local default).")
    pods: list[PodCharge] = Field(default_factory=list)
    note: str = ""

    @property
    def gpu_seconds(self) -> float:
        return sum(charge.seconds * charge.gpu_count for charge in self.pods)

    @property
    def provisional(self) -> bool:
        """Some pod's charge is still open: the figure is its cost so far, not its final cost."""
        return any(charge.is_open for charge in self.pods)


LOCAL_NOTE = "ran on the local process pool: no GPU was rented, so there is no cost"


def local_cost() -> JobCost:
    """The cost of a job on the embedded default: zero, and said so (no invented figures)."""
    return JobCost(usd=0.0, billed=False, note=LOCAL_NOTE)


def job_cost(charges: Iterable[PodCharge], *, missing: int = 0) -> JobCost:
    """Sum the charges of one job's pods. ``missing`` counts pods whose charge never arrived; an open
    charge counts its cost so far, and the note says the figure is provisional."""
    pods = sorted(charges, key=lambda charge: charge.created_at)
    usd = round(sum(charge.usd for charge in pods), 6)
    unpriced = [
        charge.pod_id for charge in pods if charge.billed_usd is None and charge.price_per_hour is None
    ]
    still_open = [charge.pod_id for charge in pods if charge.is_open]
    notes = []
    if unpriced:
        notes.append(f"no price known for pod(s) {', '.join(unpriced)}: counted as $0")
    if still_open:
        notes.append(f"provisional: pod(s) {', '.join(still_open)} not known to have ended, counted so far")
    if missing:
        notes.append(f"{missing} pod(s) not yet accounted for")
    return JobCost(usd=usd, billed=True, pods=pods, note="; ".join(notes))


def cost_line(cost: JobCost) -> str:
    """One line for logs and summaries: ``cost: $0.0123 over 2 pods (0.01 GPU-h)``, or why there is none."""
    if not cost.billed:
        return f"cost: none — {cost.note}" if cost.note else "cost: none"
    pods = f"{len(cost.pods)} pod" + ("" if len(cost.pods) == 1 else "s")
    line = f"cost: ${cost.usd:.4f} over {pods} ({cost.gpu_seconds / 3600:.2f} GPU-h)"
    return f"{line}; {cost.note}" if cost.note else line


def group_key(charge: PodCharge, by: GroupBy) -> str:
    """The group a charge falls in for a report grouped ``by``."""
    if by == "day":
        return dt.datetime.fromtimestamp(charge.created_at, dt.UTC).date().isoformat()
    value = {
        "deployment": charge.deployment,
        "job_type": charge.job_type,
        "model": charge.model,
        "submitter": charge.submitter,
        "job": charge.job_id,
    }[by]
    return value or "-"


class CostRow(BaseModel):
    group: str
    usd: float
    pods: int
    jobs: int
    gpu_hours: float


def cost_report(charges: Iterable[PodCharge], by: GroupBy) -> list[CostRow]:
    """Spend grouped ``by`` one dimension, biggest first (ties by name)."""
    groups: dict[str, list[PodCharge]] = {}
    for charge in charges:
        groups.setdefault(group_key(charge, by), []).append(charge)
    rows = [
        CostRow(
            group=name,
            usd=round(sum(charge.usd for charge in members), 6),
            pods=len(members),
            jobs=len({charge.job_id for charge in members if charge.job_id}),
            gpu_hours=round(sum(charge.seconds * charge.gpu_count for charge in members) / 3600, 6),
        )
        for name, members in groups.items()
    ]
    return sorted(rows, key=lambda row: (-row.usd, row.group))
