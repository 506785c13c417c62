"""Control-tier tasks shared by every job type: validate, identify, launch the GPU stage once.

The GPU stage task is cached under the job's content hash, with the artifact store as result
storage: an identical resubmission finds the stored result record and returns it without
creating a GPU-stage flow run (so without a pod). Concurrent identical submissions are
collapsed by the server: each launches the GPU stage with the same idempotency key
(``<job_id>:<store>:<failed attempts so far>``), so the second gets the first's flow run and waits for
it. A failed or cancelled stage is never cached, and bumps the attempt count so a
resubmission runs it again. A re-run (``force``, or a stored output gone) refreshes the cache and
adds the count of completed stage runs to the key, so it gets a new stage run rather than the old one.

Recovery is Prefect's own task retry: a GPU stage that ended because its infrastructure was lost
(the pod vanished or stopped, its container died — Crashed, but not by a limit the user set) raises
:class:`GpuStageLost`, and the ``gpu-stage`` task is retried up to ``OW_MAX_RECOVERIES`` times (default
3) after ``OW_RECOVERY_DELAY_SECONDS`` (default 10, 60, 300 s). Each retry launches a new stage run
(the failed attempt changed the idempotency key) under the same job ID, which resumes from what the
lost one stored (training from its last complete checkpoint). A failure of the job's own code
(Failed), a cancellation and an exhausted limit (``max_run_hours``, TTL, capacity wait) are never
retried. When every attempt was lost, :func:`lost_stage_outcome` gives the control flow its final
state: Crashed, listing each attempt's stage run, pod and why it ended.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
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
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelled, Cancelling, Crashed, State
from pydantic import BaseModel

from blocks.storage import load_artifact_store, store_block_name
from jobs.environment import environ as run_environ
from jobs.registry import GPU_STAGE_FLOW_NAME, get_job_spec, gpu_deployment_name
from jobs.tags import deployment_tag, inherited_tags, job_tag, job_type_tag
from jobs.validation import check_inputs, validate_params
from tasks.job_cost import record_with_cost, wait_for_stage_concluded
from tasks.run_waits import ControlRunCancelled, stop_if_cancelled_before_running, wait_until_final

FAILED_STATES = [StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]


MAX_RECOVERIES_ENV = "OW_MAX_RECOVERIES"
DEFAULT_MAX_RECOVERIES = 3
RECOVERY_DELAYS_ENV = "OW_RECOVERY_DELAY_SECONDS"
DEFAULT_RECOVERY_DELAYS_S = (10.0, 60.0, 300.0)  # before the 1st, 2nd, 3rd and later recoveries
_MAX_RECOVERY_DELAY_S = 3600.0
# Crashed by a bound the user set, or by configuration: another pod would end the same way.
_NOT_INFRASTRUCTURE_LOSS = (
    "max_run_hours",
    "its TTL",
    "pod_start_timeout_seconds",
    "Failed to submit flow run to infrastructure",
)


class GpuStageFailed(RuntimeError):
    """The GPU stage of a job did not complete."""


class GpuStageLost(GpuStageFailed):
    """The GPU stage's infrastructure was lost under it: worth another attempt on a new pod."""


def infrastructure_was_lost(state_type: StateType | None, message: str | None) -> bool:
    """Whether a GPU stage that ended in ``state_type`` with ``message`` should be recovered. Pure."""
    if state_type is not StateType.CRASHED:
        return False  # Failed: the job's own code; Cancelled: the user's decision
    return not any(marker in (message or "") for marker in _NOT_INFRASTRUCTURE_LOSS)


def crash_account(messages: list[str | None]) -> str:
    """Why a crashed GPU-stage run ended, from the messages of its Crashed states, oldest first: one
    naming a bound the user set (the ``runpod`` worker's account; the engine, stopped by the same
    SIGTERM, may force its bare "aborted by a termination signal" before or after it), else the
    newest (the worker's account of a lost pod comes after the engine's). Pure."""
    said = [" ".join((message or "").split()) for message in messages]
    bound = next((message for message in said if not infrastructure_was_lost(StateType.CRASHED, message)), None)
    return bound or (said[-1] if said else "")


def max_recoveries(environ: dict[str, str] | None = None) -> int:
    """``OW_MAX_RECOVERIES`` (0–10, default 3): how many times a lost GPU stage is started again."""
    raw = (environ if environ is not None else run_environ()).get(MAX_RECOVERIES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_RECOVERIES
    if not raw.isdigit() or int(raw) > 10:
        raise ValueError(f"{MAX_RECOVERIES_ENV}={raw!r} must be a whole number from 0 to 10")
    return int(raw)


def recovery_delays(environ: dict[str, str] | None = None) -> list[float]:
    """``OW_RECOVERY_DELAY_SECONDS``: seconds to wait before each recovery, comma-separated (the last
    repeats; default ``10,60,300``). The wait lets a flaky host or a stock-out pass; tests shorten it."""
    raw = (environ if environ is not None else run_environ()).get(RECOVERY_DELAYS_ENV, "").strip()
    if not raw:
        return list(DEFAULT_RECOVERY_DELAYS_S)
    try:
        delays = [float(part) for part in raw.split(",")]
    except ValueError:
        delays = []
    if not delays or not all(0 <= delay <= _MAX_RECOVERY_DELAY_S for delay in delays):
        raise ValueError(
            f"{RECOVERY_DELAYS_ENV}={raw!r} must be seconds from 0 to {_MAX_RECOVERY_DELAY_S:.0f}, "
            "comma-separated (e.g. 10,60,300)"
        )
    return delays


def _recover_if_lost(task, task_run, state) -> bool:
    """Prefect's retry condition for the gpu-stage task: retry a lost stage only. The failed state's
    message names the exception (the exception object itself may not survive result persistence)."""
    lost = GpuStageLost.__name__ in (state.message or "")
    if lost and task_run.run_count <= task.retries:
        get_run_logger().warning("GPU stage lost its infrastructure; it will be started again on a new pod")
    return lost


def recovery_options() -> dict[str, Any]:
    """``with_options`` for the gpu-stage task: retries of a lost stage, with backoff."""
    return {
        "retries": max_recoveries(),
        "retry_delay_seconds": recovery_delays(),
        "retry_condition_fn": _recover_if_lost,
    }


@task(name="validate-parameters", cache_policy=NO_CACHE, persist_result=False)
def validate_parameters(job_type: str, raw_params: dict[str, Any]) -> BaseModel:
    """The job's parameters with every default filled in (errors name each bad field): the one
    validation of the control tier, whose model the rest of the tier uses."""
    return validate_params(get_job_spec(job_type), raw_params)


@task(name="identify-job", cache_policy=NO_CACHE, persist_result=False)
def identify_job(job_type: str, config: BaseModel) -> dict[str, Any]:
    """Check every input exists and is valid; returns the job ID and its VRAM estimate."""
    spec = get_job_spec(job_type)
    checked = check_inputs(spec, config, load_artifact_store())
    job_id = spec.job_id(config, checked.inputs)
    if not spec.cacheable:  # a service: identical parameters still make a separate deployment
        job_id = f"{job_id}-{uuid.uuid4().hex[:8]}"
    return {"job_id": job_id, "vram_gb": checked.vram_gb, "inputs": checked.inputs}


def _job_id_cache_key(context, parameters: dict[str, Any]) -> str:
    return parameters["job_id"]


@task(
    name="launch-gpu-stage",
    cache_key_fn=_job_id_cache_key,
    persist_result=True,
    result_serializer="json",
    log_prints=True,
)
def launch_gpu_stage(
    job_id: str, job_type: str, params: dict[str, Any], job_variables: dict[str, Any], rerun: bool = False
) -> dict[str, Any]:
    """Run the job's GPU stage (or join the identical one already running) and return its record.
    ``rerun``: the stored result is not to be served (forced, or an output is gone)."""
    return run_gpu_stage(job_id, job_type, params, job_variables, rerun=rerun)


@task(name="launch-gpu-stage", cache_policy=NO_CACHE, persist_result=False, log_prints=True)
def launch_service_stage(
    job_id: str, job_type: str, params: dict[str, Any], job_variables: dict[str, Any], rerun: bool = False
) -> dict[str, Any]:
    """The GPU stage of a service (never cached: every deployment is its own run)."""
    return run_gpu_stage(job_id, job_type, params, job_variables)


def run_gpu_stage(
    job_id: str, job_type: str, params: dict[str, Any], job_variables: dict[str, Any], *, rerun: bool = False
) -> dict[str, Any]:
    stop_if_cancelled_before_running()
    deployment = gpu_deployment_name(job_type)
    store_block = store_block_name()
    attempt = str(_failed_attempts(deployment, job_id))
    if rerun:  # not the completed run(s) already there: a new one, shared by identical re-runs
        completed = len(_job_stage_runs(deployment, job_id, [StateType.COMPLETED]))
        attempt += f":rerun{completed}" if completed else ""
    from tasks.budgets import check_budget  # here, not at the top: tasks.budgets imports this module

    check_budget(job_id, job_type, params, job_variables)  # a cache hit never gets here; a recovery passes
    _announce_recovery(job_id, job_type)
    stage = run_deployment(
        deployment,
        parameters={"job_type": job_type, "job_id": job_id, "params": params, "store_block": store_block},
        # One GPU run per (job, store, attempt): identical concurrent submissions share it.
        idempotency_key=f"{job_id}:{store_block}:{attempt}",
        job_variables=job_variables,
        tags=_stage_tags(job_id, job_type),
        timeout=0,
        # Not a subflow: Prefect cancels a cancelled parent's subflows, but identical submissions share
        # this run, so whether it stops is decided below (only when no other submission waits on it).
        as_subflow=False,
    )
    get_run_logger().info("waiting for GPU stage %s (flow run %s)", stage.name, stage.id)
    try:
        stage = wait_until_final(stage.id)
    except BaseException:
        # The control flow was cancelled or crashed: stop paying for the GPU stage too — unless another
        # submission of the same job still waits on it (identical submissions share one stage).
        if not _other_submissions_waiting(job_id):
            _cancel_if_running(stage.id)
        else:
            get_run_logger().info(
                "GPU stage %s left running: another submission of job %s waits on it", stage.id, job_id
            )
        raise
    state = stage.state
    if not state.is_completed():
        message = (state.message or "").strip()
        if state.is_crashed():
            message = _settled_crash_account(stage, deployment, job_variables) or message
        error_class = GpuStageLost if infrastructure_was_lost(state.type, message) else GpuStageFailed
        error = error_class(
            f"GPU stage {stage.name} ({stage.id}) ended {state.name}: {message or 'no message'}"
        )
        error.job_id, error.job_type = job_id, job_type
        raise error
    # Every attempt's pods, recoveries included, priced into result.json and the cached record.
    return record_with_cost(job_id, deployment_name=deployment, stage=stage, job_variables=job_variables)


def _settled_crash_account(stage: FlowRun, deployment: str, job_variables: dict[str, Any]) -> str:
    """Why the crashed ``stage`` ended, once its worker has said so (:func:`crash_account`): the
    recovery is decided from it, and a pod stopped by its TTL must not count as lost because the
    engine's own crash report came first."""
    with get_client(sync_client=True) as client:
        if not wait_for_stage_concluded(client, stage, deployment_name=deployment, job_variables=job_variables):
            get_run_logger().warning(
                "The worker has not concluded GPU stage %s; deciding on recovery from what it said so far", stage.id
            )
        states = client.read_flow_run_states(stage.id)
    return crash_account([state.message for state in states if state.type is StateType.CRASHED])


def _stage_tags(job_id: str, job_type: str) -> list[str]:
    """The GPU stage's tags: the job's, the deployment it came through and who submitted it (the
    worker copies them into each pod's cost record)."""
    from prefect.runtime import deployment, flow_run

    tags = [job_tag(job_id), job_type_tag(job_type), *inherited_tags(flow_run.get_tags() or [])]
    if deployment.get_id():
        tags.append(deployment_tag(f"{flow_run.get_flow_name()}/{deployment.get_name()}"))
    return tags


def _announce_recovery(job_id: str, job_type: str) -> None:
    """On a retry of the gpu-stage task (a recovery), say so in the log and as an event."""
    from prefect.context import TaskRunContext

    from tasks.reporting import emit_job_event

    context = TaskRunContext.get()
    run_count = context.task_run.run_count if context is not None else 1
    if run_count <= 1:
        return
    get_run_logger().warning(
        "Recovering job %s: GPU stage attempt %d (the previous one lost its pod); it resumes from what "
        "the lost attempt stored",
        job_id,
        run_count,
    )
    emit_job_event("recovering", job_id, job_type, {"attempt": run_count})


def _other_submissions_waiting(job_id: str) -> bool:
    """Whether a control flow run of ``job_id`` other than this one is still live (not final, not being
    cancelled): it shares this one's GPU stage. Unknown (Prefect unreachable) counts as none."""
    from prefect.runtime import flow_run

    own = flow_run.get_id()
    live = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
    try:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[job_tag(job_id)]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=live)),
                )
            )
            stage_flow = client.read_flow_by_name(GPU_STAGE_FLOW_NAME).id if runs else None
    except Exception:  # noqa: BLE001 - while already failing: cancel, as before
        return False
    return any(str(run.id) != str(own) and run.flow_id != stage_flow for run in runs)


def _cancel_if_running(flow_run_id) -> None:
    """Cancel the stage run unless it is final: Cancelling once a worker has it (the worker stops its pod
    and ends it), Cancelled at once while it waits to be picked up (no worker would end it)."""
    message = "its job's control flow stopped"
    try:
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is None or flow_run.state.is_final():
                return
            not_started = flow_run.state.type is StateType.SCHEDULED and not flow_run.infrastructure_pid
            client.set_flow_run_state(flow_run_id, Cancelled(message=message) if not_started else Cancelling(message=message))
    except Exception:  # noqa: BLE001 - best effort while already failing; the worker's sweep is the backstop
        pass


def _failed_attempts(deployment_name: str, job_id: str) -> int:
    return len(_job_stage_runs(deployment_name, job_id, FAILED_STATES))


def _job_stage_runs(deployment_name: str, job_id: str, state_types: list[StateType] | None = None) -> list:
    """The job's GPU-stage flow runs (every submission's), optionally only those in ``state_types``."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[job_tag(job_id)]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=state_types))
                if state_types
                else None,
            ),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
        )


# -- when recovery gives up ------------------------------------------------------------------------


@dataclass(frozen=True)
class StageAttempt:
    """One GPU-stage run the control flow waited on, as its final message reports it."""

    flow_run_name: str
    flow_run_id: str
    pod_id: str | None  # the run's infrastructure_pid: the RunPod pod it ran in (None: never placed)
    state_name: str
    message: str


def describe_lost_attempts(job_id: str, attempts: list[StageAttempt]) -> str:
    """The control flow's Crashed message once every attempt lost its infrastructure. Pure."""
    recoveries = len(attempts) - 1
    lines = [
        f"The GPU stage of job {job_id} lost its infrastructure on every attempt ({len(attempts)}: the first "
        f"and {recoveries} recover{'y' if recoveries == 1 else 'ies'}, the most {MAX_RECOVERIES_ENV} allows); "
        "it was not started again. Resubmit the job to try again (fine-tuning resumes from its last checkpoint)."
    ]
    for number, attempt in enumerate(attempts, start=1):
        why = " ".join(attempt.message.split()) or "no message"
        lines.append(
            f"- attempt {number}: stage run {attempt.flow_run_name} ({attempt.flow_run_id}) in pod "
            f"{attempt.pod_id or '(none)'}: {attempt.state_name}: {why}"
        )
    return "\n".join(lines)


def lost_stage_outcome(job_id: str, job_type: str, stage_state: State) -> State | None:
    """The control flow's final state when the gpu-stage task gave up on a stage lost on every attempt:
    Crashed (the infrastructure failed, not the job), its message listing each attempt. ``None`` for any
    other outcome of the task, whose own state (Completed, or Failed by the job's code) stands."""
    if not stage_state.is_failed() or GpuStageLost.__name__ not in (stage_state.message or ""):
        return None
    return Crashed(message=describe_lost_attempts(job_id, _stage_attempts(job_id, job_type, stage_state)))


def cancelled_outcome(stage_state: State) -> State | None:
    """The control flow's final state when it was cancelled while it waited for its GPU stage (the wait
    raised :class:`ControlRunCancelled`; the stage was cancelled unless another submission waits on
    it): Cancelled. ``None`` for any other outcome of the gpu-stage task."""
    if not stage_state.is_failed() or ControlRunCancelled.__name__ not in (stage_state.message or ""):
        return None
    return Cancelled(message="The job's control flow was cancelled while its GPU stage ran.")


def _stage_attempts(job_id: str, job_type: str, stage_state: State) -> list[StageAttempt]:
    """The stage runs the gpu-stage task run waited on, oldest first: the job's newest ``run_count``
    stage runs (one per try; earlier submissions' runs come before them, a concurrent identical
    submission waited on the same ones)."""
    runs = sorted(_job_stage_runs(gpu_deployment_name(job_type), job_id), key=lambda run: run.created)
    task_run_id = stage_state.state_details.task_run_id
    if task_run_id is not None:
        with get_client(sync_client=True) as client:
            tries = client.read_task_run(task_run_id).run_count
        runs = runs[-tries:] if tries else runs
    return [
        StageAttempt(
            flow_run_name=run.name,
            flow_run_id=str(run.id),
            pod_id=run.infrastructure_pid,
            state_name=run.state.name if run.state else "unknown",
            message=(run.state.message or "") if run.state else "",
        )
        for run in runs
    ]
