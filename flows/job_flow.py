"""Control flows: one builder turns a job type into a Prefect flow whose parameters are its fields.

Every job type's control flow is built here, so every job type gets the same behaviour:

1. its parameters are the fields of the job's pydantic model (descriptions, bounds and
   defaults become the Prefect UI form; ``--param`` works field by field on the CLI);
2. ``validate-parameters`` and ``identify-job`` fail within seconds, before any GPU stage,
   with messages naming the field, file and line;
3. ``gpu-stage`` is cached under the job's content hash, so an identical resubmission returns
   the stored result without a GPU-stage flow run — unless ``force`` is set or one of the stored
   outputs is gone, when it runs again and replaces the stored result;
4. the flow run is tagged ``ow-job:<job_id>`` and gets a summary artifact.

The control flows run on a cheap work pool; only ``gpu-stage`` needs a GPU.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from prefect import Flow, flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import State
from pydantic import BaseModel, Field

from blocks.storage import load_artifact_store, load_store_block
from flows.gpu_stage import summary_markdown
from jobs.hardware import FORCE_FIELD, describe_hardware_request, gpu_stage_job_variables
from jobs.records import JobRecord, stale_reason
from jobs.registry import get_job_spec
from jobs.tags import job_tag, job_type_tag
from tasks.job_control import (
    cancelled_outcome,
    identify_job,
    launch_gpu_stage,
    launch_service_stage,
    lost_stage_outcome,
    recovery_options,
    validate_parameters,
)
from tasks.reporting import artifact_key


def signature_from_model(model: type[BaseModel]) -> inspect.Signature:
    """Keyword-only parameters mirroring the model's fields (type, bounds, description, default).

    Prefect reads a parameter's description from a ``Field`` given as its default, and keeps
    bounds carried in the annotation; both end up in the deployment's UI form.
    """
    parameters = []
    for name, field in model.model_fields.items():
        annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        if field.default_factory is not None:
            default_value = field.default_factory()
        else:
            default_value = field.default  # PydanticUndefined for required fields
        default = Field(default=default_value, description=field.description)
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        )
    return inspect.Signature(parameters)


def job_flow(job_type: str, flow_name: str, module: str, run_name: str | None = None) -> Flow:
    """The control flow of ``job_type`` (defined in ``module`` so deployments can import it)."""
    spec = get_job_spec(job_type)

    def control_flow(**params: Any) -> dict[str, Any] | State:
        return submit_job(job_type, params)

    control_flow.__signature__ = signature_from_model(spec.params_model)
    control_flow.__name__ = flow_name.replace("-", "_").replace("/", "_")
    control_flow.__qualname__ = control_flow.__name__
    control_flow.__module__ = module
    control_flow.__doc__ = spec.description
    return flow(name=flow_name, description=spec.description, flow_run_name=run_name, log_prints=True)(
        control_flow
    )


def submit_job(job_type: str, raw_params: dict[str, Any]) -> dict[str, Any] | State:
    """The control tier of one job: validate, identify, run (or reuse) the GPU stage, summarise.

    Returns the job's record, or a Crashed state when its GPU stage lost its infrastructure on every
    attempt recovery allows.
    """
    logger = get_run_logger()
    config = validate_parameters(job_type, raw_params)
    params = config.model_dump(mode="json")  # what the GPU stage's deployment is given (and validates again)
    identity = identify_job(job_type, config)
    job_id = identity["job_id"]
    logger.info("job ID %s", job_id)
    _label_flow_run(job_id, job_type)

    spec = get_job_spec(job_type)
    # The job's hardware request (or its VRAM estimate) becomes the runpod work pool's job variables.
    job_variables = gpu_stage_job_variables(config, identity["vram_gb"])
    logger.info("%s", describe_hardware_request(config, identity["vram_gb"]))
    recovery = recovery_options()
    rerun = spec.cacheable and _rerun_reason(job_id, params)
    if rerun:
        logger.warning("job %s runs again, not from the cache: %s", job_id, rerun)
    stage = (
        launch_gpu_stage.with_options(
            result_storage=load_store_block(), refresh_cache=bool(rerun), **recovery
        )
        if spec.cacheable
        else launch_service_stage.with_options(**recovery)
    )
    state = stage(job_id, job_type, params, job_variables, rerun=bool(rerun), return_state=True)
    stopped = cancelled_outcome(state)
    if stopped is not None:  # cancelled while it waited (a thread of the control worker gets no signal)
        logger.info("%s", stopped.message)
        return stopped
    gave_up = lost_stage_outcome(job_id, job_type, state)
    if gave_up is not None:
        # Lost on every attempt: the infrastructure failed, not the job, so the run ends Crashed
        # (a flow that returns a state ends in it), its message naming each attempt and its pod.
        logger.error("%s", gave_up.message)
        return gave_up
    record_dict = state.result()  # raises GpuStageFailed if the stage failed (the job's code, a cancellation)
    cached = state.name == "Cached"
    if cached:
        logger.info("cache hit: job %s already completed; nothing was recomputed", job_id)
    record = JobRecord.model_validate(record_dict)
    create_markdown_artifact(
        markdown=summary_markdown(record, cached=cached),
        key=artifact_key(job_id, "job"),
        description=f"{job_type} job {job_id}",
    )
    return {**record_dict, "cached": cached}


def _rerun_reason(job_id: str, params: dict[str, Any]) -> str | None:
    """Why the job's stored result must not be served (the user forced a re-run, or an output it lists
    is gone, so a cache hit would report a job complete whose outputs no one can read); None: serve it."""
    if params.get(FORCE_FIELD):
        return f"{FORCE_FIELD}=true was given"
    return stale_reason(load_artifact_store(), job_id)


def _label_flow_run(job_id: str, job_type: str) -> None:
    """Tag the control flow run with its job ID, so clients can find a job's runs."""
    run_id = flow_run.get_id()
    if not run_id:
        return
    tags = set(flow_run.get_tags()) | {job_tag(job_id), job_type_tag(job_type)}
    with get_client(sync_client=True) as client:
        client.update_flow_run(run_id, tags=sorted(tags))
