"""Prefect API helpers the client and the `ow` command line share: submit, find, wait, cancel.

Jobs are found by the tags their flow runs carry: ``ow-job:<job_id>`` and ``ow-type:<type>``
(set by the control flow once it knows the job's content hash; the GPU stage is created with them).

A :class:`Run` is OpenWeights' run of a job: one attempt of its GPU stage (one flow run of the
``gpu-stage`` flow, so one pod on RunPod), with OpenWeights' status and its own log.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.states import Cancelling

from jobs.registry import GPU_STAGE_FLOW_NAME
from jobs.tags import JOB_TAG_PREFIX, TYPE_TAG_PREFIX, job_tag, job_type_tag, tag_value

# OpenWeights' statuses (of jobs and of runs), from Prefect's state types.
PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELED = (
    "pending",
    "in_progress",
    "completed",
    "failed",
    "canceled",
)
FINAL_STATUSES = (COMPLETED, FAILED, CANCELED)
STATE_TO_STATUS = {
    StateType.SCHEDULED: PENDING,
    StateType.PENDING: PENDING,
    StateType.PAUSED: PENDING,
    StateType.RUNNING: IN_PROGRESS,
    StateType.CANCELLING: IN_PROGRESS,
    StateType.COMPLETED: COMPLETED,
    StateType.FAILED: FAILED,
    StateType.CRASHED: FAILED,
    StateType.CANCELLED: CANCELED,
}


def job_id_of(flow_run: FlowRun) -> str | None:
    return tag_value(flow_run.tags, JOB_TAG_PREFIX)


def job_type_of(flow_run: FlowRun) -> str | None:
    return tag_value(flow_run.tags, TYPE_TAG_PREFIX)


def submit(
    deployment: str,
    parameters: dict[str, Any],
    tags: Iterable[str] = (),
    job_variables: dict[str, Any] | None = None,
) -> FlowRun:
    """Create a flow run of a deployment (what `prefect deployment run` does)."""
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        return client.create_flow_run_from_deployment(
            found.id, parameters=parameters, tags=list(tags), job_variables=job_variables
        )


def read(flow_run_id: UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def wait(flow_run_id: UUID, timeout: float | None = None, poll_seconds: float = 1.0) -> FlowRun:
    """The flow run once its state is final (:func:`tasks.run_waits.wait_until_final`: on the server's
    events, read every ``poll_seconds`` where they cannot be reached); TimeoutError after ``timeout``."""
    from tasks.run_waits import wait_until_final

    return wait_until_final(flow_run_id, timeout, poll_seconds=poll_seconds)


def wait_for_job_id(flow_run_id: UUID, timeout: float = 300, poll_seconds: float = 0.3) -> str:
    """The job ID of a control flow run, once it has hashed the job (fails if the run fails first)."""
    deadline = time.monotonic() + timeout
    while True:
        flow_run = read(flow_run_id)
        job_id = job_id_of(flow_run)
        if job_id:
            return job_id
        if flow_run.state is not None and flow_run.state.is_final():
            raise RuntimeError(
                f"{flow_run.name} ended {flow_run.state_name} before identifying its job: {flow_run.state.message}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{flow_run.name} has not identified its job after {timeout:.0f}s ({flow_run.state_name})"
            )
        time.sleep(poll_seconds)


def cancel(flow_run_id: UUID, message: str = "cancelled by the client") -> bool:
    """Ask Prefect to cancel a run (its worker stops the process or pod); False if already final."""
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        if flow_run.state is None or flow_run.state.is_final():
            return False
        client.set_flow_run_state(flow_run_id, Cancelling(message=message))
        return True


PAGE = 200  # the API's largest page

# The server records what a run's engine sends after the run's final state a moment later: task-run
# states come as events, and the engine's last log batch is flushed as the process exits (log
# batches go out every 2 s by default). Readers at the moment of completion wait this long at most.
SETTLE_SECONDS = 30.0
LOG_BATCH_SECONDS = 2.0


def job_runs(
    job_id: str | None = None, job_type: str | None = None, limit: int = 200, gpu_stage: bool | None = None
) -> list[FlowRun]:
    """Flow runs of jobs, newest first; ``gpu_stage`` True/False selects GPU stages or control flows."""
    # Every run of our deployments carries the deployments' "ow" tag; a job's runs also its job tag.
    tags = [job_tag(job_id)] if job_id else ["ow"]
    if job_type:
        tags.append(job_type_tag(job_type))
    flow_filter = FlowFilter(name=FlowFilterName(any_=[GPU_STAGE_FLOW_NAME])) if gpu_stage is True else None
    found: list[FlowRun] = []
    with get_client(sync_client=True) as client:
        while len(found) < limit:
            page = client.read_flow_runs(
                flow_filter=flow_filter,
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=tags)),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=min(PAGE, limit - len(found)),
                offset=len(found),
            )
            found += page
            if len(page) < PAGE:
                break
        if gpu_stage is False:
            names = {flow_id: client.read_flow(flow_id).name for flow_id in {run.flow_id for run in found}}
            found = [run for run in found if names[run.flow_id] != GPU_STAGE_FLOW_NAME]
    return [run for run in found if job_id_of(run)]


def task_runs(
    flow_run_id: UUID,
    name_like: str | None = None,
    settle_seconds: float = SETTLE_SECONDS,
    expect: Sequence[str] = (),
) -> list[TaskRun]:
    """The flow run's task runs (those whose name contains ``name_like``), once each has a final state
    and one named after each of ``expect`` (task names, e.g. ``launch-gpu-stage``) is there.

    Prefect records task runs from their events, which can reach the server after the flow run's own
    final state (a busy control worker sends the events of all its runs); after ``settle_seconds`` the
    runs are returned as they are.
    """
    deadline = time.monotonic() + settle_seconds
    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    task_filter = TaskRunFilter(name=TaskRunFilterName(like_=name_like)) if name_like else None
    with get_client(sync_client=True) as client:
        while True:
            found = client.read_task_runs(flow_run_filter=run_filter, task_run_filter=task_filter)
            settled = all(run.state is not None and run.state.is_final() for run in found) and all(
                any(run.name.startswith(f"{name}-") for run in found) for name in expect
            )
            if settled or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


def settled_logs(flow_runs: Sequence[FlowRun], settle_seconds: float = SETTLE_SECONDS) -> list[str]:
    """Log lines of ``flow_runs`` (see :func:`logs`), including the last ones of a run that just ended.

    When a run ended less than ``settle_seconds`` ago, its engine may still be sending its last
    log batch: the logs are read again, a batch interval apart, until two reads agree.
    """
    ids = [flow_run.id for flow_run in flow_runs]
    lines = logs(ids)
    now = datetime.now(UTC)
    ended_recently = any(
        flow_run.state is not None
        and flow_run.state.is_final()
        and (now - flow_run.state.timestamp).total_seconds() < settle_seconds
        for flow_run in flow_runs
    )
    deadline = time.monotonic() + settle_seconds
    while ended_recently and time.monotonic() < deadline:
        time.sleep(LOG_BATCH_SECONDS)
        again = logs(ids)
        if len(again) == len(lines):
            return again
        lines = again
    return lines


def logs(flow_run_ids: Iterable[UUID], limit: int = 20_000) -> list[str]:
    """Log lines of the given flow runs, oldest first (paged through the API)."""
    ids = list(flow_run_ids)
    if not ids:
        return []
    entries = []
    with get_client(sync_client=True) as client:
        while len(entries) < limit:
            page = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)),
                limit=min(PAGE, limit - len(entries)),
                offset=len(entries),
                sort=LogSort.TIMESTAMP_ASC,
            )
            entries += page
            if len(page) < PAGE:
                break
    return [f"{entry.timestamp:%Y-%m-%d %H:%M:%S} {entry.message}" for entry in entries]


@dataclass
class Run:
    """One run of a job (an attempt of its GPU stage): ``id``, ``job_id``, ``status`` (OpenWeights'),
    ``state_name`` (Prefect's, e.g. ``Cancelled`` or ``Crashed``), ``created_at``; dict-style access works too."""

    id: str
    job_id: str
    status: str
    state_name: str
    created_at: datetime | None
    flow_run: FlowRun

    @classmethod
    def of(cls, flow_run: FlowRun) -> Run:
        state_type = flow_run.state.type if flow_run.state else None
        return cls(
            id=str(flow_run.id),
            job_id=job_id_of(flow_run) or "",
            status=STATE_TO_STATUS[state_type] if state_type else PENDING,
            state_name=flow_run.state_name or "Pending",
            created_at=flow_run.created,
            flow_run=flow_run,
        )

    def __getitem__(self, key: str):
        return getattr(self, key)

    def logs(self) -> str:
        """This run's log lines, oldest first (OpenWeights keeps them in ``run.log_file``; here they are Prefect's)."""
        return "\n".join(settled_logs([read(self.flow_run.id)]))

    def download(self, target_dir: str | Path) -> Path:
        """Write this run's log to ``<target_dir>/<run id>.log``, as OpenWeights' ``run.download`` does."""
        target = Path(target_dir)
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{self.id}.log").write_text(self.logs() + "\n", encoding="utf-8")
        return target


def list_runs(job_id: str, limit: int = 200) -> list[Run]:
    """The runs (GPU-stage attempts) of a job, oldest first, so ``[-1]`` is the latest as in OpenWeights."""
    return [Run.of(flow_run) for flow_run in reversed(job_runs(job_id, limit=limit, gpu_stage=True))]
