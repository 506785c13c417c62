"""Control-tier tasks shared by every job type: validate, identify, launch the GPU stage once.

The GPU stage task is cached under the job's content hash, with the artifact store as result
storage: an identical resubmission finds the stored result record and returns it without
creating a GPU-stage flow run (so without a pod). Concurrent identical submissions are
collapsed by the server: each launches the GPU stage with the same idempotency key
(``<job_id>:<failed attempts so far>``), so the second gets the first's flow run and waits for
it. A failed or cancelled stage is never cached, and bumps the attempt count so a
resubmission runs it again.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.exceptions import FlowRunWaitTimeout
from prefect.flow_runs import wait_for_flow_run
from prefect.states import Cancelling
from prefect.utilities.asyncutils import run_coro_as_sync

from blocks.storage import load_artifact_store, store_block_name
from jobs.records import result_key
from jobs.registry import get_job_spec
from jobs.validation import check_inputs, validate_params

FAILED_STATES = [StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]


class GpuStageFailed(RuntimeError):
    """The GPU stage of a job did not complete."""


def job_tag(job_id: str) -> str:
    return f"ow-job:{job_id}"


def job_type_tag(job_type: str) -> str:
    return f"ow-type:{job_type}"


def gpu_deployment_name(job_type: str) -> str:
    return f"gpu-stage/{job_type}"


@task(name="validate-parameters", cache_policy=NO_CACHE, persist_result=False)
def validate_parameters(job_type: str, raw_params: dict[str, Any]) -> dict[str, Any]:
    """The job's parameters with every default filled in (errors name each bad field)."""
    return validate_params(get_job_spec(job_type), raw_params).model_dump(mode="json")


@task(name="identify-job", cache_policy=NO_CACHE, persist_result=False)
def identify_job(job_type: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check every input exists and is valid; returns the job ID and its VRAM estimate."""
    spec = get_job_spec(job_type)
    config = spec.params_model.model_validate(params)
    checked = check_inputs(spec, config, load_artifact_store())
    job_id = spec.job_id(config, checked.inputs)
    if not spec.cacheable:  # a service: identical parameters still make a separate deployment
        job_id = f"{job_id}-{uuid.uuid4().hex[:8]}"
    return {"job_id": job_id, "vram_gb": checked.vram_gb, "inputs": checked.inputs}


def _job_id_cache_key(context, parameters: dict[str, Any]) -> str:
    return parameters["job_id"]


@task(
    name="gpu-stage",
    cache_key_fn=_job_id_cache_key,
    persist_result=True,
    result_serializer="json",
    log_prints=True,
)
def launch_gpu_stage(job_id: str, job_type: str, params: dict[str, Any], job_variables: dict[str, Any]) -> dict[str, Any]:
    """Run the job's GPU stage (or join the identical one already running) and return its record."""
    return run_gpu_stage(job_id, job_type, params, job_variables)


@task(name="gpu-stage", cache_policy=NO_CACHE, persist_result=False, log_prints=True)
def launch_service_stage(job_id: str, job_type: str, params: dict[str, Any], job_variables: dict[str, Any]) -> dict[str, Any]:
    """The GPU stage of a service (never cached: every deployment is its own run)."""
    return run_gpu_stage(job_id, job_type, params, job_variables)


def run_gpu_stage(job_id: str, job_type: str, params: dict[str, Any], job_variables: dict[str, Any]) -> dict[str, Any]:
    deployment = gpu_deployment_name(job_type)
    store_block = store_block_name()
    attempt = _failed_attempts(deployment, job_id)
    stage = run_deployment(
        deployment,
        parameters={"job_type": job_type, "job_id": job_id, "params": params, "store_block": store_block},
        # One GPU run per (job, store, attempt): identical concurrent submissions share it.
        idempotency_key=f"{job_id}:{store_block}:{attempt}",
        job_variables=job_variables,
        tags=[job_tag(job_id), job_type_tag(job_type)],
        timeout=0,
    )
    try:
        stage = _wait_until_final(stage.id)
    except BaseException:
        # The control flow was cancelled or crashed: stop paying for the GPU stage too.
        _cancel_if_running(stage.id)
        raise
    state = stage.state
    if not state.is_completed():
        message = (state.message or "").strip()
        raise GpuStageFailed(f"GPU stage {stage.name} ({stage.id}) ended {state.name}: {message or 'no message'}")
    return load_artifact_store().read_json(result_key(job_id))


def _wait_until_final(flow_run_id, recheck_seconds: int = 60):
    """The GPU-stage run once it is final, woken by the server's event stream.

    Polling once a second for an hour-long stage loads the server for nothing, and on the
    embedded default that server shares the CPUs the stage trains on. Prefect's
    ``wait_for_flow_run`` subscribes to the run's state events (reading the run once after
    subscribing, so a run that ended first is seen); it is re-armed every ``recheck_seconds``
    so a missed event costs at most that long. If the event stream cannot be reached, the run
    is polled every few seconds instead.
    """
    while True:
        try:
            return run_coro_as_sync(wait_for_flow_run(flow_run_id, timeout=recheck_seconds))
        except FlowRunWaitTimeout:
            continue
        except Exception as exc:  # noqa: BLE001 - the event stream is an optimisation; polling still works
            get_run_logger().debug("event stream unavailable (%s); polling the GPU-stage run", exc)
            with get_client(sync_client=True) as client:
                flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            time.sleep(5)


def _cancel_if_running(flow_run_id) -> None:
    try:
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and not flow_run.state.is_final():
                client.set_flow_run_state(flow_run_id, Cancelling(message="its job's control flow stopped"))
    except Exception:  # noqa: BLE001 - best effort while already failing; the worker's sweep is the backstop
        pass


def _failed_attempts(deployment_name: str, job_id: str) -> int:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[job_tag(job_id)]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=FAILED_STATES)),
            ),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
        )
    return len(runs)
