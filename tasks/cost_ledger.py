"""The cost ledger: one Prefect table artifact per pod, on the GPU-stage flow run the pod ran; and
the budget holds: one artifact per admitted job, on its control flow run, while that run lasts.

The RunPod worker writes a pod's :class:`~jobs.costs.PodCharge` as soon as the pod exists (open: no
end yet) and again once the pod is gone (:func:`charge_artifact`, the same key: Prefect keeps both as
versions, and the newest is the pod's charge); a worker that finds the pod of a dead worker gone writes
the closed one. The Prefect UI shows it on the GPU stage's Artifacts tab, and it lives in Prefect's
database (SQLite or PostgreSQL) with the runs it describes. The control tier reads a job's charges to
put its cost in the result record; ``ow costs`` and budgets read every charge in a window, an open one
counted up to the time of reading.
A hold (:class:`~jobs.budgets.BudgetHold`) is the estimate the budget check admitted a job with; it
counts against budgets while the control flow run that wrote it has not reached a final state
(:func:`read_holds`), so jobs admitted together cannot each spend the same money.
This module owns the artifacts' keys and layout; nothing else parses them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Iterable
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import TERMINAL_STATES, Artifact
from prefect.client.schemas.sorting import ArtifactSort

from jobs.budgets import BudgetHold
from jobs.costs import PodCharge

logger = logging.getLogger(__name__)

CHARGE_KEY_PREFIX = "ow-pod-charge-"
HOLD_KEY_PREFIX = "ow-budget-hold-"
_PAGE = 200


def _artifact_key(prefix: str, name: str) -> str:
    """Prefect artifact keys are lowercase letters, digits and dashes."""
    return prefix + re.sub(r"[^a-z0-9-]", "-", name.lower())


def charge_key(pod_id: str) -> str:
    """The artifact key of a pod's charge."""
    return _artifact_key(CHARGE_KEY_PREFIX, pod_id)


def hold_key(job_id: str) -> str:
    """The artifact key of a job's budget hold."""
    return _artifact_key(HOLD_KEY_PREFIX, job_id)


def charge_artifact(charge: PodCharge) -> ArtifactCreate:
    """The artifact recording ``charge``: a one-row table, readable in the UI and by :func:`charges_from`."""
    row = {**charge.model_dump(mode="json"), "seconds": round(charge.seconds, 3), "usd": round(charge.usd, 6)}
    price = "unknown price" if charge.price_per_hour is None else f"${charge.price_per_hour:.4g}/h"
    so_far = " so far (open: the pod may still run)" if charge.is_open else ""
    return ArtifactCreate(
        key=charge_key(charge.pod_id),
        type="table",
        data=json.dumps([row]),
        description=(
            f"RunPod pod {charge.pod_id}: {charge.gpu_count}× {charge.gpu_type_id or 'unknown GPU'} "
            f"({charge.cloud or '-'}), {price}, {charge.seconds:.0f} s, ${charge.usd:.4f}{so_far}"
        ),
        flow_run_id=UUID(charge.flow_run_id),
    )


def charges_from(artifacts: Iterable[Artifact]) -> list[PodCharge]:
    """The charges recorded in ``artifacts``; anything that is not a charge row is skipped (and logged)."""
    charges = []
    for artifact in artifacts:
        if not (artifact.key or "").startswith(CHARGE_KEY_PREFIX):
            continue
        try:
            data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
            charges.append(PodCharge.model_validate(data[0]))
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            logger.warning("Artifact %s is not a pod charge (%s); skipped", artifact.key, exc)
    return charges


def read_charges(
    client: SyncPrefectClient,
    *,
    flow_run_ids: Iterable[UUID | str] | None = None,
    since: dt.datetime | None = None,
    now: float | None = None,
) -> list[PodCharge]:
    """Every pod's charge in the ledger (or those of the given GPU-stage flow runs; or, with ``since``,
    those of pods created since then), newest first; an open one counts up to ``now`` (Unix time,
    default: the time of reading).

    ``since`` bounds the read, not only the answer: a charge is written once its pod exists, so no
    artifact written before ``since`` holds a pod created after it, and paging stops there.
    """
    now = time.time() if now is None else now
    flow_run_filter = None
    if flow_run_ids is not None:
        ids = [UUID(str(run_id)) for run_id in flow_run_ids]
        if not ids:
            return []
        flow_run_filter = ArtifactFilterFlowRunId(any_=ids)
    artifacts = _read_newest_first(client, CHARGE_KEY_PREFIX, flow_run_filter, since)
    # A pod's key is written when it is launched and again when it is gone: the newest row wins.
    newest: dict[str, PodCharge] = {}
    for charge in charges_from(artifacts):
        if since is None or charge.created_at >= since.timestamp():
            newest.setdefault(charge.pod_id, charge)
    return [charge.at(now) for charge in newest.values()]


def read_open_charges(
    client: SyncPrefectClient, *, work_pool: str, since: dt.datetime, now: float | None = None
) -> list[PodCharge]:
    """The charges still open of ``work_pool``'s pods created since ``since``, counted up to ``now``."""
    return [
        charge
        for charge in read_charges(client, since=since, now=now)
        if charge.is_open and charge.work_pool == work_pool
    ]


def still_open(client: SyncPrefectClient, charge: PodCharge) -> bool:
    """Whether ``charge``'s pod still has an open charge in the ledger: nobody closed it since it was read."""
    return any(
        newest.pod_id == charge.pod_id and newest.is_open
        for newest in read_charges(client, flow_run_ids=[charge.flow_run_id])
    )


def hold_artifact(hold: BudgetHold, control_flow_run_id: UUID | str) -> ArtifactCreate:
    """The artifact recording that a job was admitted holding ``hold.usd`` of its budgets."""
    return ArtifactCreate(
        key=hold_key(hold.job_id),
        type="table",
        data=json.dumps([hold.model_dump(mode="json")]),
        description=(
            f"Budget hold: job {hold.job_id} was admitted with an estimated cost of ${hold.usd:.4f}; "
            "it counts against budgets until this run ends, less what its pods are charged meanwhile."
        ),
        flow_run_id=UUID(str(control_flow_run_id)),
    )


def read_holds(client: SyncPrefectClient, *, since: dt.datetime | None = None) -> list[BudgetHold]:
    """The holds of jobs whose control flow run has not reached a final state (admitted since ``since``)."""
    artifacts = [
        artifact
        for artifact in _read_newest_first(client, HOLD_KEY_PREFIX, None, since)
        if artifact.flow_run_id
    ]
    if not artifacts:
        return []
    live = set()
    run_ids = sorted({artifact.flow_run_id for artifact in artifacts})
    for offset in range(0, len(run_ids), _PAGE):
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=run_ids[offset : offset + _PAGE]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=sorted(TERMINAL_STATES))),
            ),
            limit=_PAGE,
        )
        live.update(run.id for run in runs)
    holds = []
    for artifact in artifacts:
        if artifact.flow_run_id not in live:
            continue
        try:
            data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
            holds.append(BudgetHold.model_validate(data[0]))
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            logger.warning("Artifact %s is not a budget hold (%s); skipped", artifact.key, exc)
    return holds


def _read_newest_first(
    client: SyncPrefectClient,
    key_prefix: str,
    flow_run_filter: ArtifactFilterFlowRunId | None,
    since: dt.datetime | None,
) -> list[Artifact]:
    artifact_filter = ArtifactFilter(
        key=ArtifactFilterKey(like_=f"{key_prefix}%"), flow_run_id=flow_run_filter
    )
    artifacts: list[Artifact] = []
    while True:
        page = client.read_artifacts(
            artifact_filter=artifact_filter,
            sort=ArtifactSort.CREATED_DESC,
            limit=_PAGE,
            offset=len(artifacts),
        )
        artifacts.extend(page)
        if len(page) < _PAGE or (
            since is not None and page[-1].created is not None and page[-1].created < since
        ):
            break
    return artifacts
