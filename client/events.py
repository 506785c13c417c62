"""``ow.events`` and ``ow.run``: the events of a job's runs, as OpenWeights' client shows them.

Inside a job, ``ow.run.log({"step": 1, "loss": 0.5})`` records an event of the run it is part of.
The job's code needs no credential for it: the event is appended to the file the stage names in
``OW_RUN_EVENTS``, and the stage reports the run's events as its ``events`` table artifact
(:mod:`compute.run_events`).

From anywhere, ``ow.events.list(job_id=…)`` (or ``run_id=…``, a run of ``job.runs``) returns the
events oldest first, each a dict as OpenWeights has them: ``id``, ``run_id``, ``job_id``,
``created_at`` (ISO 8601), ``data`` (the logged dict) and ``file`` (always None here: a file a job
makes goes into ``OW_OUTPUT_DIR``, its outputs). The metrics a job type's own stage logs (a
fine-tune's loss, learning rate, … per step) are events too, after the run's logged ones, with
their values as the run's metrics table shows them (4 significant digits) and ``created_at`` the
time that table was written. ``ow.events.latest(["loss"], job_id=…)`` returns the newest value
of each field (``"*"``: of every field).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

from compute.run_events import EVENTS_TABLE, RUN_EVENTS_ENV, append_run_event

# The table a job type's stage reports its metrics in (tasks.reporting.PrefectReporter.flush_metrics).
METRICS_TABLE = "metrics"


class Events:
    """``ow.events``: the events of a job's runs (OpenWeights' ``Events``)."""

    def list(self, job_id: str | None = None, run_id: str | UUID | None = None) -> list[dict[str, Any]]:
        """Events of one run (``run_id``) or of every run of a job (``job_id``), oldest first."""
        from client import runs

        if run_id is not None:
            flow_run = _read_run(run_id)
            found = [(str(flow_run.id), runs.job_id_of(flow_run) or "")]
        elif job_id is not None:
            found = [(run.id, run.job_id) for run in runs.list_runs(job_id)]
        else:
            raise ValueError("Either job_id or run_id must be provided")
        events: list[dict[str, Any]] = []
        for one_run_id, one_job_id in found:
            events += _run_events(one_run_id, one_job_id)
        return events

    def latest(
        self, fields: str | Iterable[str], job_id: str | None = None, run_id: str | UUID | None = None
    ) -> dict[str, Any]:
        """The newest value of each field in ``fields`` among the events (``"*"``: every field, None
        values left out), as OpenWeights' ``events.latest``; a field no event has is absent."""
        wanted = None if fields == "*" else {fields} if isinstance(fields, str) else set(fields)
        latest: dict[str, Any] = {}
        for event in self.list(job_id=job_id, run_id=run_id):
            for key, value in event["data"].items():
                if wanted is None and value is not None or wanted is not None and key in wanted:
                    latest[key] = value
        return latest


class CurrentRun:
    """``ow.run`` inside a job's code: ``ow.run.log({...})`` records an event of the run.

    Outside a job there is no run to log to (OpenWeights would create a "script job"): ``log``
    raises, saying so.
    """

    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        self._events_file = environ.get(RUN_EVENTS_ENV)
        self.job_id: str | None = environ.get("OW_JOB_ID")

    def log(self, event_data: dict[str, Any], file: Any = None) -> None:
        """Record ``event_data`` (a dict of JSON values) as an event of this run."""
        if file is not None:
            raise ValueError(
                "ow.run.log(file=...) is not supported here: write the file into OW_OUTPUT_DIR, "
                "which is stored as the job's outputs, and log its name"
            )
        if not self._events_file:
            raise RuntimeError(
                f"ow.run.log works inside a job's code, where {RUN_EVENTS_ENV} names the run's events file; "
                "it is not set here. Log from the script a custom job runs, or read a job's events "
                "with ow.events.list(job_id=...)"
            )
        append_run_event(Path(self._events_file), event_data)


def _read_run(run_id: str | UUID):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run_id = run_id if isinstance(run_id, UUID) else UUID(str(run_id))
    except ValueError:
        raise ValueError(f"run_id {run_id!r} is not a run ID (the id of one of job.runs)") from None
    try:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        raise LookupError(f"no run {run_id}") from None


def _run_events(run_id: str, job_id: str) -> list[dict[str, Any]]:
    """The events of one run: what its code logged, then the metrics its stage logged."""
    events = [
        _event(run_id, job_id, row["created_at"], row["data"])
        for row, _ in _table(run_id, job_id, EVENTS_TABLE)
        if isinstance(row, dict) and isinstance(row.get("data"), dict)
    ]
    for row, written_at in _table(run_id, job_id, METRICS_TABLE):
        # The metrics table fills the columns a step did not log with None.
        data = {key: value for key, value in row.items() if value is not None}
        events.append(_event(run_id, job_id, written_at, data))
    for number, event in enumerate(events, start=1):
        event["id"] = f"{run_id}/{number}"
    return events


def _event(run_id: str, job_id: str, created_at: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": None,
        "run_id": run_id,
        "job_id": job_id,
        "created_at": created_at,
        "data": data,
        "file": None,
    }


def _table(run_id: str, job_id: str, name: str) -> list[tuple[dict[str, Any], str]]:
    """Rows of the newest version of a run's table artifact ``name``, each with when it was written."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from tasks.reporting import artifact_key

    with get_client(sync_client=True) as client:
        newest = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]),
                key=ArtifactFilterKey(any_=[artifact_key(job_id, name)]),
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    if not newest:
        return []
    rows = newest[0].data if isinstance(newest[0].data, list) else json.loads(newest[0].data or "[]")
    written_at = newest[0].created.isoformat() if newest[0].created else None
    return [(row, written_at) for row in rows]
