"""The GPU stage: the one flow that does a job's heavy work, on the GPU work pool.

The control flow of every job type (``flows/job_flow.py``) launches this flow through its
deployment (``gpu-stage/<job type>``) only when the job's result is not cached. On a ``runpod``
pool that means one pod per GPU stage; locally it is a process.

It validates the parameters again (a stage can be started by hand), runs the job type's stage
function with a Prefect reporter, and writes the job's result record last, so a record in the
store always describes complete outputs.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run

from blocks.secrets import delete_secret, load_secrets, save_secret
from blocks.storage import load_store_block, ow_home
from infra.local.cpu_policy import prioritise_calling_thread
from jobs.costs import JobCost, cost_line
from jobs.records import JobRecord
from jobs.registry import GPU_STAGE_FLOW_NAME, get_job_spec
from store.layout import result_key
from tasks.reporting import PrefectReporter, emit_job_event, opens_in_a_browser, short_job_id


# No log_prints: the stage reports through its reporter, and a custom job's output is logged line by
# line. Prefect's print capture would also defeat libraries that capture stdout themselves: dill
# swaps sys.stdout to read dis.dis() output when datasets fingerprints a map function, and with
# print patched, 40-odd lines of bytecode landed in every training run's logs.
@flow(name=GPU_STAGE_FLOW_NAME, flow_run_name="{job_id}")
def gpu_stage(job_type: str, job_id: str, params: dict[str, Any], store_block: str | None = None) -> dict[str, Any]:
    """Run the heavy part of job ``job_id`` and store its outputs and result record.

    ``store_block`` names the artifact-store block the control tier used, so both tiers read
    and write the same store whatever the GPU machine's environment says.
    """
    from compute.stage import StageContext  # imported here: pulls in the compute stack
    from compute.work_dirs import job_work_dir, remove_work_dir
    from jobs.identity import check_job_id
    from jobs.validation import validate_params

    # A stage can be started by hand with any parameters: the job ID names a directory that is
    # deleted, so it is checked (and the directory kept under the work root) before anything else.
    spec = get_job_spec(job_type)
    check_job_id(job_id, prefix=spec.id_prefix)
    work_root = ow_home() / "work"
    work_dir = job_work_dir(work_root, job_id)
    config = validate_params(spec, params)
    logger = get_run_logger()
    store = load_store_block(store_block).artifact_store()
    remove_work_dir(work_root, work_dir)
    reporter = PrefectReporter(job_id, job_type)
    context = StageContext(
        job_id=job_id,
        store=store,
        work_dir=work_dir,
        cache_dir=ow_home() / "cache",
        reporter=reporter,
        secrets=load_secrets(spec.secrets),
        pod_id=os.environ.get("RUNPOD_POD_ID") or None,
        save_secret=save_secret,
        delete_secret=delete_secret,
        read_secret=lambda name: load_secrets([name]).get(name),
        cancelling=_this_run_is_cancelled,
    )
    started = time.time()
    emit_job_event("started", job_id, job_type, {"flow_run_id": str(flow_run.get_id())})
    # The heavy work runs on this thread. A local worker starts the stage under SCHED_BATCH; this
    # thread (and the torch threads it starts) get the normal policy back, Prefect's log, event
    # and heartbeat threads stay batch, so they do not preempt a training step when they wake.
    prioritise_calling_thread()
    try:
        _stop_if_cancelled("before the job's work starts")
        result = spec.stage_function()(config, context)
        _stop_if_cancelled("before the result record is written")
    except BaseException as exc:
        reporter.flush_metrics()  # what was logged before the failure stays visible
        reporter.drain()
        emit_job_event("failed", job_id, job_type, {"error": f"{type(exc).__name__}: {exc}"[:2000]})
        raise
    record = JobRecord(
        job_id=job_id,
        job_type=job_type,
        params=config.model_dump(mode="json"),
        base_model=getattr(config, "model", None),
        outputs=result.outputs,
        metrics=result.metrics,
        details=result.details,
        code_version=spec.code_version,
        flow_run_id=str(flow_run.get_id()),
        started_at=started,
        completed_at=time.time(),
    )
    store.write_json(result_key(job_id), record.model_dump(mode="json"))
    for prefix in result.disposable_prefixes:  # only now: a crash before the record resumes from them
        store.delete(prefix)
    reporter.finish(summary_markdown(record), links=result.outputs)
    emit_job_event("completed", job_id, job_type, {"outputs": result.outputs, "metrics": result.metrics})
    shutil.rmtree(work_dir, ignore_errors=True)
    logger.info("job %s completed; outputs: %s", job_id, result.outputs)
    return record.model_dump(mode="json")


def _stop_if_cancelled(when: str) -> None:
    """End the stage as a cancellation would if its run is being cancelled.

    Prefect cancels a stage by SIGTERM, whose handler raises ``TerminationSignal``; but raised while
    the interpreter runs a finalizer (a weakref callback, a ``__del__``), Python prints the exception
    and drops it, and the stage runs on, paid for, to store a result its user cancelled (seen in a
    test: the signal landed while the model loaded, the job trained to the end). So the stage also
    asks the server before its work and before its record: the record is never written for a run
    being cancelled.
    """
    if _this_run_is_cancelled():
        get_run_logger().warning("this run is being cancelled: stopping %s", when)
        raise TerminationSignal(signal=signal.SIGTERM)


def _this_run_is_cancelled() -> bool:
    """Whether this flow run is being cancelled (Prefect marks it Cancelling before stopping it); False
    when the server cannot say, as for a pod that went away."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run.get_id()).state
    except Exception:  # noqa: BLE001 - the server unreachable: not known to be a cancellation
        return False
    return state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED)


def summary_markdown(record: JobRecord, cached: bool = False) -> str:
    """The end-of-job summary shown in the flow run.

    The heading carries the short job ID; the full one follows as code, to select and copy.
    """
    lines = [f"# {record.job_type} job {short_job_id(record.job_id)}", "", f"- job ID: `{record.job_id}`"]
    if cached:
        lines[1:1] = ["", "**Cache hit**: an identical job already completed; nothing was recomputed."]
    if record.base_model:
        lines.append(f"- base model: `{record.base_model}`")
    lines.append(f"- took: {_duration(record.completed_at - record.started_at)}")
    lines += _cost_lines(record.cost, cached)
    lines += ["", "## Outputs", ""]
    lines += [_output_line(name, uri) for name, uri in record.outputs.items()] or ["- (none)"]
    if any(not opens_in_a_browser(uri) for uri in record.outputs.values()):
        # A browser cannot follow file:// from a web page (nor s3://): say what does fetch them.
        lines += ["", f"Download the outputs with `ow fetch {record.job_id} -o DIRECTORY`."]
    scalar_metrics = {k: v for k, v in record.metrics.items() if isinstance(v, (int, float, str)) and v is not None}
    if scalar_metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {_format(value)} |" for name, value in scalar_metrics.items()]
    return "\n".join(lines) + "\n"


def _cost_lines(cost: JobCost | None, cached: bool) -> list[str]:
    """The cost line (and, for billed pods, one row per pod); nothing before the control tier priced the job."""
    if cost is None:
        return []
    if cached:
        return [f"- {cost_line(cost)} (the original run; this cache hit cost nothing)"]
    lines = [f"- {cost_line(cost)}"]
    if cost.pods:
        lines += ["", "| pod | GPUs | cloud | $/h | seconds | USD |", "| --- | --- | --- | --- | --- | --- |"]
        for pod in cost.pods:
            price = "?" if pod.price_per_hour is None else f"{pod.price_per_hour:.4g}"
            billed = " (billed)" if pod.billed_usd is not None else ""
            lines.append(
                f"| `{pod.pod_id}` | {pod.gpu_count}× {pod.gpu_type_id or '?'} | {pod.cloud or '-'} | {price} "
                f"| {pod.seconds:.0f} | {pod.usd:.4f}{billed} |"
            )
    return lines


def _output_line(name: str, uri: str) -> str:
    if opens_in_a_browser(uri):
        return f"- **{name}**: [{uri}]({uri})"
    if uri.startswith("file://"):
        return f"- **{name}**: `{uri[len('file://'):]}` (a directory on the machine that holds the local store)"
    return f"- **{name}**: `{uri}`"


def _duration(seconds: float) -> str:
    """``42.1 s``, ``12 min 5 s``, ``3 h 04 min``: as precise as a person reads a duration."""
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes, whole_seconds = divmod(round(seconds), 60)
    if minutes < 90:
        return f"{minutes} min {whole_seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
