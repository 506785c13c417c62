"""What one pod cost, as the ``runpod`` worker records it once the pod is gone. Pure: no I/O.

The worker knows what it rented (the launch's GPU type, count, cloud and hourly price), when the pod
was created and when it saw it gone, and — where RunPod's billing endpoint answers — what RunPod
billed. :func:`pod_charge` turns that, with the job fields the GPU-stage flow run carries (its tags and
parameters, :mod:`jobs.tags`), into a :class:`~jobs.costs.PodCharge` for the cost ledger
(:mod:`tasks.cost_ledger`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from infra.runpod.gpu_choice import GpuCandidate
from jobs.costs import PodCharge
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


def pod_charge(
    *,
    pod_id: str,
    flow_run_id: str,
    tags: Iterable[str],
    parameters: Mapping[str, Any] | None,
    work_pool: str | None,
    candidate: GpuCandidate,
    created_at: float,
    ended_at: float,
    billed_usd: float | None = None,
) -> PodCharge:
    """The charge of pod ``pod_id``, launched on ``candidate`` for flow run ``flow_run_id``.

    Job fields come from the GPU stage's tags (``ow-job:``, ``ow-type:``, ``ow-deployment:``,
    ``submitter:``) and its ``params["model"]``; a flow run that is not a job's GPU stage (any other
    deployment on the pool) leaves them empty.
    """
    tags = list(tags)
    params = (parameters or {}).get("params")
    model = params.get("model") if isinstance(params, Mapping) else None
    ended_at = max(ended_at, created_at)
    price = candidate.price_per_hour
    return PodCharge(
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
        ended_at=ended_at,
        billed_usd=billed_figure(billed_usd, seconds=ended_at - created_at, price_per_hour=price),
    )


def describe_charge(charge: PodCharge) -> str:
    """``Pod abc cost $0.0123 (56 s at $0.79/h, as RunPod billed)``: the worker's log line."""
    price = "an unknown price" if charge.price_per_hour is None else f"${charge.price_per_hour:.4g}/h"
    source = ", as RunPod billed" if charge.billed_usd is not None else ""
    return f"Pod {charge.pod_id} cost ${charge.usd:.4f} ({charge.seconds:.0f} s at {price}{source})"
