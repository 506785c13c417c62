"""What one pod cost, as the ``runpod`` worker records it: open at launch, closed once the pod is gone.
Pure: no I/O.

The worker knows what it rented (the launch's GPU type, count, cloud and hourly price), when the pod
was created, the bound it launched it with, when it saw it gone, and — where RunPod's billing endpoint
answers — what RunPod billed. :func:`pod_charge` turns that, with the job fields the GPU-stage flow run
carries (its tags and parameters, :mod:`jobs.tags`), into a :class:`~jobs.costs.PodCharge` for the cost
ledger (:mod:`tasks.cost_ledger`): open (no end yet) as soon as the pod exists, so a worker killed
mid-run still leaves a trace of the pod. Whoever later finds the pod gone closes that charge:
:func:`close_charge` when the end is known (the sweep's terminate), :func:`close_gone_charge` when it
must be worked out (RunPod's bill, the flow run's end, the bound).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from infra.bounds import DEFAULT_TTL_HOURS, MAX_RUN_HOURS_MAX, TTL_HOURS_MAX
from infra.runpod.gpu_choice import GpuCandidate
from infra.worker.pool_settings import RunPodPodSettings
from jobs.costs import EndedBy, PodCharge
from jobs.tags import DEPLOYMENT_TAG_PREFIX, JOB_TAG_PREFIX, SUBMITTER_TAG_PREFIX, TYPE_TAG_PREFIX, tag_value


def pod_created_at(reported: dt.datetime | None, launched_at: float) -> float:
    """Unix time the pod was created: RunPod's ``createdAt`` (the clock that bills, and right for a
    pod found after an unanswered create) when it said, else when the launch returned. Never later
    than the launch's return: a clock ahead of ours must not shorten the bill."""
    if reported is None:
        return launched_at
    return min(reported.timestamp(), launched_at)


def billed_figure(billed_usd: float | None, *, seconds: float, price_per_hour: float | None) -> float | None:
    """RunPod's billed total as the charge should hold it. A total of $0 for a pod that ran at a known
    price means the billing records have not caught up yet, not a free pod: None, so the charge falls
    back to price × seconds."""
    if billed_usd is None or billed_usd < 0:
        return None
    if billed_usd == 0 and seconds > 0 and price_per_hour:
        return None
    return billed_usd


def pod_bound(created_at: float, *, max_run_hours: float | None, ttl_hours: float) -> float:
    """Unix time by which a pod created at ``created_at`` ends at the latest: its ``max_run_hours``
    (the worker, or any worker's sweep, terminates it then) or else its TTL (its watchdog ends it then,
    unless someone in the pod extends it)."""
    return created_at + (max_run_hours or ttl_hours) * 3600


def longest_pod_hours(
    base_job_template: Mapping[str, Any], job_variable_sets: Iterable[Mapping[str, Any]]
) -> float:
    """The longest a pod of the pool may run by its launch bounds (``max_run_hours``, else
    ``ttl_hours``), over the pool's defaults and each set of ``job_variables`` (its deployments');
    unreadable values are skipped, and the result is at most :data:`~infra.bounds.TTL_HOURS_MAX`."""
    properties = (base_job_template.get("variables") or {}).get("properties") or {}
    defaults = {
        name: (properties.get(name) or {}).get("default", RunPodPodSettings.model_fields[name].default)
        for name in ("max_run_hours", "ttl_hours")
    }
    longest = 0.0
    for variables in [{}, *job_variable_sets]:
        values = {**defaults, **{name: variables[name] for name in defaults if name in variables}}
        hours = _hours(values["max_run_hours"]) or _hours(values["ttl_hours"]) or DEFAULT_TTL_HOURS
        longest = max(longest, hours)
    return min(longest, max(TTL_HOURS_MAX, MAX_RUN_HOURS_MAX))


def _hours(value: Any) -> float | None:
    try:
        hours = float(value)
    except (TypeError, ValueError):
        return None
    return hours if 0 < hours < float("inf") else None


def pod_charge(
    *,
    pod_id: str,
    flow_run_id: str,
    tags: Iterable[str],
    parameters: Mapping[str, Any] | None,
    work_pool: str | None,
    candidate: GpuCandidate,
    created_at: float,
    ended_at: float | None,
    billed_usd: float | None = None,
    bound_at: float | None = None,
    ended_by: EndedBy = "worker",
) -> PodCharge:
    """The charge of pod ``pod_id``, launched on ``candidate`` for flow run ``flow_run_id``; open
    (``ended_at`` None, no bill, no ``ended_by``) while the pod may still run.

    Job fields come from the GPU stage's tags (``ow-job:``, ``ow-type:``, ``ow-deployment:``,
    ``submitter:``) and its ``params["model"]``; a flow run that is not a job's GPU stage (any other
    deployment on the pool) leaves them empty.
    """
    tags = list(tags)
    params = (parameters or {}).get("params")
    model = params.get("model") if isinstance(params, Mapping) else None
    price = candidate.price_per_hour
    charge = PodCharge(
        pod_id=pod_id,
        flow_run_id=flow_run_id,
        job_id=tag_value(tags, JOB_TAG_PREFIX),
        job_type=tag_value(tags, TYPE_TAG_PREFIX),
        deployment=tag_value(tags, DEPLOYMENT_TAG_PREFIX),
        model=model if isinstance(model, str) else None,
        submitter=tag_value(tags, SUBMITTER_TAG_PREFIX),
        work_pool=work_pool,
        gpu_type_id=candidate.gpu_type_id,
        gpu_count=candidate.gpu_count,
        cloud=candidate.cloud_type,
        price_per_hour=price,
        created_at=created_at,
        ended_at=None,
        bound_at=bound_at,
    )
    if ended_at is None:
        return charge
    return close_charge(charge, ended_at=ended_at, ended_by=ended_by, billed_usd=billed_usd)


def close_charge(
    charge: PodCharge, *, ended_at: float, ended_by: EndedBy, billed_usd: float | None
) -> PodCharge:
    """``charge`` closed at ``ended_at`` (never before the pod's creation), with RunPod's bill as
    :func:`billed_figure` keeps it."""
    ended_at = max(ended_at, charge.created_at)
    billed = billed_figure(
        billed_usd, seconds=ended_at - charge.created_at, price_per_hour=charge.price_per_hour
    )
    return charge.model_copy(
        update={"ended_at": ended_at, "ended_by": ended_by, "billed_usd": billed, "as_of": None}
    )


def close_gone_charge(
    charge: PodCharge, *, billed_usd: float | None, flow_run_end: float | None, now: float
) -> PodCharge | None:
    """The open ``charge`` of a pod found gone while no worker watched it, closed at the best end known:

    1. the end RunPod's bill implies (created + bill ÷ price at launch), when it billed and the price
       is known — the bill is what the pod cost, the only witness of when it stopped billing;
    2. else the GPU-stage flow run's end (the pod's entrypoint ends the pod when its run ends);
    3. else the pod's bound, once it has passed.

    None while none of these is known yet (a pod gone under a run that has not ended, with no bill):
    the charge stays open and counts up to its bound. An end is never later than ``now``.
    """

    def closed(ended_at: float, ended_by: EndedBy) -> PodCharge:
        return close_charge(charge, ended_at=min(ended_at, now), ended_by=ended_by, billed_usd=billed_usd)

    so_far = charge.at(now).seconds
    billed = billed_figure(billed_usd, seconds=so_far, price_per_hour=charge.price_per_hour)
    if billed is not None and charge.price_per_hour:
        return closed(charge.created_at + billed / charge.price_per_hour * 3600, "billing")
    if flow_run_end is not None:
        return closed(flow_run_end, "flow_run_end")
    if charge.bound_at is not None and now >= charge.bound_at:
        return closed(charge.bound_at, "bound")
    return None


def describe_charge(charge: PodCharge) -> str:
    """``Pod abc cost $0.0123 (56 s at $0.79/h, as RunPod billed)``: the worker's log line; an open
    charge says ``so far``."""
    price = "an unknown price" if charge.price_per_hour is None else f"${charge.price_per_hour:.4g}/h"
    source = ", as RunPod billed" if charge.billed_usd is not None else ""
    cost = "has cost" if charge.is_open else "cost"
    so_far = " so far" if charge.is_open else ""
    return f"Pod {charge.pod_id} {cost} ${charge.usd:.4f}{so_far} ({charge.seconds:.0f} s at {price}{source})"
