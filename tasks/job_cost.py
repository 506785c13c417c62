"""A job's cost in its result record: added by the control tier once the job's GPU stage completed.

On a ``runpod`` work pool every GPU-stage attempt of the job that got a pod (recoveries included: the
flow runs tagged ``ow-job:<id>`` on the ``gpu-stage/<type>`` deployment with an infrastructure PID)
has a charge in the cost ledger (:mod:`tasks.cost_ledger`): open from the pod's launch, closed by the
worker once that pod is gone — up to the pool's ``final_state_grace_seconds`` after the stage reached
its final state — or, if that worker died, by another worker's sweep. So the control tier waits,
bounded, for each of those pods' closed charges and sums them (:func:`jobs.costs.job_cost`); a charge
still open when the wait ends counts its cost so far and the note says the figure is provisional, and a
pod with no charge at all is counted in the note, not guessed.
On any other pool (the embedded default's process pool) nothing was rented: :func:`jobs.costs.local_cost`.

The cost goes into the record the gpu-stage task returns (what Prefect caches, so a cache hit shows
what the original run cost) and into ``result.json``, rewritten atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.exceptions import ObjectNotFound

from blocks.storage import load_artifact_store
from infra.worker.pool_settings import RunPodPodSettings
from infra.worker.runpod_worker import RunPodWorker
from jobs.costs import JobCost, PodCharge, cost_line, job_cost, local_cost
from jobs.tags import job_tag
from store.layout import result_key
from tasks.cost_ledger import read_charges

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse as Deployment

CHARGE_POLL_SECONDS = 2.0
# Beyond the pool's grace and one poll: the worker's terminate, its billing read (bounded at 20 s) and
# the artifact write, on a worker that may be busy with other runs.
CHARGE_WAIT_SLACK_SECONDS = 60.0


def record_with_cost(
    job_id: str, *, deployment_name: str, stage: FlowRun, job_variables: Mapping[str, Any]
) -> dict[str, Any]:
    """The job's result record with its ``cost``, which is also written back to its result.json.

    Never fails the job: a cost that cannot be worked out is logged and left out of the record.
    """
    logger = get_run_logger()
    store = load_artifact_store()
    record = store.read_json(result_key(job_id))
    try:
        with get_client(sync_client=True) as client:
            cost = reckon_job_cost(
                client, job_id, deployment_name=deployment_name, stage=stage, job_variables=job_variables
            )
    except Exception as exc:  # noqa: BLE001 - the job's outputs are complete; only the bill is unknown
        logger.warning("Could not work out what job %s cost (%s); its record has no cost", job_id, exc)
        return record
    record = {**record, "cost": cost.model_dump(mode="json")}
    store.write_json(result_key(job_id), record)
    logger.info("job %s %s", job_id, cost_line(cost))
    return record


class _RunPodPools:
    """Which work pools are ``runpod`` pools (read once each): only their runs rented a pod."""

    def __init__(self, client: SyncPrefectClient):
        self._client = client
        self._types: dict[str | None, str | None] = {}

    def __contains__(self, pool_name: str | None) -> bool:
        if pool_name not in self._types:
            try:
                self._types[pool_name] = self._client.read_work_pool(pool_name).type if pool_name else None
            except ObjectNotFound:
                self._types[pool_name] = None
        return self._types[pool_name] == RunPodWorker.type


def _charge_deadline(
    client: SyncPrefectClient,
    stage: FlowRun,
    deployment: Deployment,
    job_variables: Mapping[str, Any],
    clock: Callable[[], float],
) -> float:
    """When, by ``clock``, the charges of the pods of ``stage``'s attempts have had all the time they may take."""
    pool = client.read_work_pool(stage.work_pool_name)
    return clock() + charge_wait_seconds(pool.base_job_template, deployment.job_variables or {}, job_variables)


def reckon_job_cost(
    client: SyncPrefectClient,
    job_id: str,
    *,
    deployment_name: str,
    stage: FlowRun,
    job_variables: Mapping[str, Any],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobCost:
    """What job ``job_id`` cost over every GPU-stage attempt, once ``stage`` (its last) completed."""
    runpod_pools = _RunPodPools(client)
    if stage.work_pool_name not in runpod_pools:
        return local_cost()
    deployment = client.read_deployment_by_name(deployment_name)
    deadline = _charge_deadline(client, stage, deployment, job_variables, clock)
    waiting_for: set[str] = set()
    while True:
        attempts = [
            run
            for run in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[job_tag(job_id)])),
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            )
            if run.work_pool_name in runpod_pools
        ]
        charges = read_charges(client, flow_run_ids=[run.id for run in attempts])
        pod_ids = [run.infrastructure_pid for run in attempts]
        missing = pods_without_charge(pod_ids, [charge for charge in charges if not charge.is_open])
        if not missing or clock() >= deadline:
            return job_cost(charges, missing=len(pods_without_charge(pod_ids, charges)))
        if missing != waiting_for:
            get_run_logger().info(
                "waiting for the worker to record what pod(s) %s cost", ", ".join(sorted(missing))
            )
            waiting_for = missing
        sleep(CHARGE_POLL_SECONDS)


def wait_for_stage_concluded(
    client: SyncPrefectClient,
    stage: FlowRun,
    *,
    deployment_name: str,
    job_variables: Mapping[str, Any],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait, bounded as for the job's cost, until the ``runpod`` worker concluded ``stage``: it records
    the closed charge of the stage's pod after it has said why the run ended (a Crashed run's account:
    the pod's TTL, ``max_run_hours``, a lost pod), and that account can come seconds after the engine's
    own bare crash. True at once for a stage that rented no pod; False when the wait ran out."""
    if stage.work_pool_name not in _RunPodPools(client) or not stage.infrastructure_pid:
        return True
    deployment = client.read_deployment_by_name(deployment_name)
    deadline = _charge_deadline(client, stage, deployment, job_variables, clock)
    while True:
        charges = read_charges(client, flow_run_ids=[stage.id])
        if not pods_without_charge([stage.infrastructure_pid], [charge for charge in charges if not charge.is_open]):
            return True
        if clock() >= deadline:
            return False
        sleep(CHARGE_POLL_SECONDS)


def pods_without_charge(pod_ids: Iterable[str | None], charges: Iterable[PodCharge]) -> set[str]:
    """The pods the attempts ran on (their infrastructure PIDs; an attempt that never got one, say
    one still waiting for capacity when it ended, has none) whose charge is not in ``charges``."""
    return {pod_id for pod_id in pod_ids if pod_id} - {charge.pod_id for charge in charges}


def charge_wait_seconds(base_job_template: Mapping[str, Any], *job_variables: Mapping[str, Any]) -> float:
    """How long after the stage ended its pods' charges may still come: the pool's
    ``final_state_grace_seconds`` and ``poll_interval_seconds`` (later ``job_variables`` win over the
    pool's defaults) plus :data:`CHARGE_WAIT_SLACK_SECONDS`."""
    properties = (base_job_template.get("variables") or {}).get("properties") or {}

    def setting(name: str) -> float:
        value: Any = (properties.get(name) or {}).get("default", RunPodPodSettings.model_fields[name].default)
        for variables in job_variables:
            value = variables.get(name, value)
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            return float(RunPodPodSettings.model_fields[name].default)

    return setting("final_state_grace_seconds") + setting("poll_interval_seconds") + CHARGE_WAIT_SLACK_SECONDS
