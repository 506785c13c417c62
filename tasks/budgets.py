"""The budget check of the control tier: refuse a job before its GPU stage when it would overspend.

:func:`check_budget` runs inside the ``gpu-stage`` task (:mod:`tasks.job_control`), whose body runs only
on a cache miss, so a cache hit costs nothing and is never refused. It reads the budgets from the Prefect
variable ``ow_budgets`` (:mod:`jobs.budgets`), the spend from the cost ledger (:mod:`tasks.cost_ledger`),
estimates the job's cost (:mod:`jobs.cost_estimate`) from the ``runpod`` work pool of the job type's
``gpu-stage`` deployment, and raises :class:`BudgetExceeded` naming the budget and what is left.

Admission is one job at a time, under the Prefect global concurrency limit ``ow-budget-admission``
(limit 1, created on first use): read spend and holds, decide, and write the admitted job's hold
(:func:`tasks.cost_ledger.hold_artifact`), so a sweep of jobs submitted together is admitted only as
far as the money goes, whichever control worker runs each. A
recovery (a retry after a lost pod) is not refused: the job was admitted, and stopping it half-way
would waste what it spent.

On a work pool that rents no GPU (the embedded default's process pool) budgets are inert: the check
says so once per job in its log and refuses nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import WorkPool
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError, ObjectAlreadyExists, ObjectNotFound
from prefect.variables import Variable

from jobs.budgets import (
    BUDGETS_VARIABLE,
    Budget,
    BudgetHold,
    decision,
    job_scopes,
    parse_budgets,
    period_window,
)
from jobs.cost_estimate import (
    CostEstimate,
    InputSize,
    PoolPricing,
    cheapest_fitting_pod,
    estimate_job_cost,
    estimated_run_time,
)
from jobs.hardware import MAX_COST_FIELD
from jobs.registry import GPU_STAGE_FLOW_NAME, get_job_spec, gpu_deployment_name
from jobs.tags import SUBMITTER_TAG_PREFIX, tag_value
from tasks.cost_ledger import hold_artifact, read_charges, read_holds
from tasks.job_control import GpuStageFailed

BILLED_POOL_TYPE = "runpod"  # RunPodWorker.type, spelled here so `ow costs` need not import the worker
ADMISSION_LIMIT = "ow-budget-admission"  # a Prefect global concurrency limit of 1: one admission at a time
ADMISSION_WAIT_SECONDS = 300.0


class BudgetExceeded(GpuStageFailed):
    """The job's estimated cost exceeds what a budget covering it has left; no GPU stage was started."""


def check_budget(job_id: str, job_type: str, params: dict[str, Any], job_variables: dict[str, Any]) -> None:
    """Refuse the job (:class:`BudgetExceeded`) when its estimate exceeds what a budget covering it has left."""
    logger = _logger()
    if _is_recovery():
        logger.info("budget not checked: job %s is being recovered, and was admitted when it started", job_id)
        return
    deployment_name = gpu_deployment_name(job_type)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        pool = client.read_work_pool(deployment.work_pool_name) if deployment.work_pool_name else None
        budgets = load_budgets(job_id)
        if not budgets:
            return
        if pool is None or pool.type != BILLED_POOL_TYPE:
            logger.info(
                "budgets are inert for this job: %s runs on work pool %r (type %s), which rents no GPU",
                deployment_name,
                pool.name if pool else None,
                pool.type if pool else "none",
            )
            return
        estimate = job_estimate(
            job_type, params, {**pool_variables(pool), **(deployment.job_variables or {}), **job_variables}
        )
        if estimate is None:
            logger.warning(
                "budgets not applied to job %s: no price is known for the GPU types it may use; set the work pool's "
                "gpu_prices, or the job's %s",
                job_id,
                MAX_COST_FIELD,
            )
            return
        submitter = _submitter()
        scopes = job_scopes(pool.name, submitter)
        covering = [budget for budget in budgets if budget.scope in scopes]
        if not covering:
            return
        _ensure_admission_limit(client)
        with concurrency(ADMISSION_LIMIT, occupy=1, strict=True, timeout_seconds=ADMISSION_WAIT_SECONDS):
            now = dt.datetime.now(dt.UTC)
            since = min(period_window(budget.period, now)[0] for budget in covering)
            charges = read_charges(client, since=since)
            holds = read_holds(client, since=since)
            refusal = decision(covering, charges, estimate, scopes, now, holds)
            if refusal:
                error = BudgetExceeded(f"job {job_id} was not started: {refusal}")
                error.job_id, error.job_type = job_id, job_type
                raise error
            hold = BudgetHold(
                job_id=job_id,
                usd=estimate.usd,
                work_pool=pool.name,
                submitter=submitter,
                created_at=now.timestamp(),
            )
            client.create_artifact(hold_artifact(hold, _control_flow_run_id()))
    logger.info(
        "within budget: estimated cost $%.2f (%s), held until the job ends", estimate.usd, estimate.basis
    )


def load_budgets(job_id: str | None = None) -> list[Budget]:
    """The budgets in the Prefect variable ``ow_budgets``; a malformed one fails naming the entry."""
    from jobs.budgets import BudgetConfigError

    try:
        return parse_budgets(Variable.get(BUDGETS_VARIABLE, default=None))
    except BudgetConfigError as exc:
        if job_id is None:
            raise
        raise GpuStageFailed(f"job {job_id} was not started: budgets cannot be checked: {exc}") from None


def job_estimate(job_type: str, params: dict[str, Any], settings: dict[str, Any]) -> CostEstimate | None:
    """The job's estimated cost on a pod with ``settings`` (the pool's, the deployment's and the run's job
    variables, later ones winning); None when no price is known."""
    max_cost = params.get(MAX_COST_FIELD)
    if max_cost is not None:
        return estimate_job_cost(estimated_run_time(job_type, params, {}), None, max_cost_usd=float(max_cost))
    pricing = PoolPricing.model_validate(
        {key: settings[key] for key in PoolPricing.model_fields if key in settings}
    )
    pod = cheapest_fitting_pod(
        pricing, float(settings.get("min_vram_gb") or 0), settings.get("allowed_hardware") or ()
    )
    return estimate_job_cost(estimated_run_time(job_type, params, _input_sizes(job_type, params)), pod)


def pool_variables(pool: WorkPool) -> dict[str, Any]:
    """The defaults of a work pool's job variables (what its UI form sets)."""
    properties = (pool.base_job_template or {}).get("variables", {}).get("properties", {})
    return {
        name: spec["default"]
        for name, spec in properties.items()
        if isinstance(spec, dict) and "default" in spec
    }


def gpu_work_pools(client: SyncPrefectClient) -> list[WorkPool]:
    """The work pools the ``gpu-stage`` deployments run on (each once)."""
    deployments = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[GPU_STAGE_FLOW_NAME])))
    pools: dict[str, WorkPool] = {}
    for name in sorted(
        {deployment.work_pool_name for deployment in deployments if deployment.work_pool_name}
    ):
        try:
            pools[name] = client.read_work_pool(name)
        except ObjectNotFound:
            continue
    return list(pools.values())


def _input_sizes(job_type: str, params: dict[str, Any]) -> dict[str, InputSize]:
    """Rows and bytes of the job's input files, by the parameter naming them (from their upload records)."""
    from blocks.storage import load_artifact_store
    from store.files import UnknownFileError, get_file_record

    spec = get_job_spec(job_type)
    store = load_artifact_store()
    sizes = {}
    for input_file in spec.input_files(spec.params_model.model_validate(params)):
        try:
            record = get_file_record(store, input_file.file_id)
        except (UnknownFileError, ValueError):
            continue  # checked by identify-job already; a size unknown only weakens the estimate
        sizes[input_file.field] = InputSize(rows=record.rows, bytes=record.bytes)
    return sizes


def _ensure_admission_limit(client: SyncPrefectClient) -> None:
    """Create the admission limit on first use (a user may also create it, or raise it, in the UI)."""
    try:
        client.read_global_concurrency_limit_by_name(ADMISSION_LIMIT)
    except ObjectNotFound:
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=ADMISSION_LIMIT, limit=1)
            )
        except ObjectAlreadyExists:
            pass  # another control worker created it first


def _control_flow_run_id() -> str:
    from prefect.runtime import flow_run

    return flow_run.get_id()


def _submitter() -> str | None:
    from prefect.runtime import flow_run

    return tag_value(flow_run.get_tags() or [], SUBMITTER_TAG_PREFIX)


def _is_recovery() -> bool:
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    return context is not None and context.task_run.run_count > 1


def _logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)
