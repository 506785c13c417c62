"""The cost ledger: one Prefect table artifact per pod, on the GPU-stage flow run the pod ran.

The RunPod worker writes a pod's :class:`~jobs.costs.PodCharge` once the pod is gone
(:func:`charge_artifact`); the Prefect UI shows it on the GPU stage's Artifacts tab, and it lives in
Prefect's database (SQLite or PostgreSQL) with the runs it describes. The control tier reads a job's
charges to put its cost in the result record; ``ow costs`` and budgets read every charge in a window.
This module owns the artifact's key and layout; nothing else parses them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.client.schemas.objects import Artifact
from prefect.client.schemas.sorting import ArtifactSort

from jobs.costs import PodCharge

logger = logging.getLogger(__name__)

CHARGE_KEY_PREFIX = "ow-pod-charge-"
_PAGE = 200


def charge_key(pod_id: str) -> str:
    """The artifact key of a pod's charge (Prefect keys are lowercase letters, digits and dashes)."""
    return CHARGE_KEY_PREFIX + re.sub(r"[^a-z0-9-]", "-", pod_id.lower())


def charge_artifact(charge: PodCharge) -> ArtifactCreate:
    """The artifact recording ``charge``: a one-row table, readable in the UI and by :func:`charges_from`."""
    row = {**charge.model_dump(mode="json"), "seconds": round(charge.seconds, 3), "usd": round(charge.usd, 6)}
    price = "unknown price" if charge.price_per_hour is None else f"${charge.price_per_hour:.4g}/h"
    return ArtifactCreate(
        key=charge_key(charge.pod_id),
        type="table",
        data=json.dumps([row]),
        description=(
            f"RunPod pod {charge.pod_id}: {charge.gpu_count}× {charge.gpu_type_id or 'unknown GPU'} "
            f"({charge.cloud or '-'}), {price}, {charge.seconds:.0f} s, ${charge.usd:.4f}"
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


def read_charges(client: SyncPrefectClient, *, flow_run_ids: Iterable[UUID | str] | None = None) -> list[PodCharge]:
    """Every charge in the ledger (or those of the given GPU-stage flow runs), newest first."""
    flow_run_filter = None
    if flow_run_ids is not None:
        ids = [UUID(str(run_id)) for run_id in flow_run_ids]
        if not ids:
            return []
        flow_run_filter = ArtifactFilterFlowRunId(any_=ids)
    artifact_filter = ArtifactFilter(key=ArtifactFilterKey(like_=f"{CHARGE_KEY_PREFIX}%"), flow_run_id=flow_run_filter)
    artifacts: list[Artifact] = []
    while True:
        page = client.read_artifacts(
            artifact_filter=artifact_filter, sort=ArtifactSort.CREATED_DESC, limit=_PAGE, offset=len(artifacts)
        )
        artifacts.extend(page)
        if len(page) < _PAGE:
            break
    # A key is written once per pod; should it be written twice, the newest row wins.
    newest: dict[str, PodCharge] = {}
    for charge in charges_from(artifacts):
        newest.setdefault(charge.pod_id, charge)
    return list(newest.values())
