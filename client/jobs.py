"""Jobs as OpenWeights' client shows them, over Prefect flow runs and the artifact store.

A job is identified by its content hash. Its flow runs (the control flow and the GPU stage)
carry the tag ``ow-job:<id>``; its result record is ``jobs/<id>/result.json`` in the store.
Statuses are OpenWeights' — ``pending``, ``in_progress``, ``completed``, ``failed``,
``canceled`` — mapped from the newest control run's Prefect state.

Creating a job validates and hashes it here first (errors name the field, file and line before
anything is submitted). An identical job that is pending, running or completed is returned as it
is; a failed or canceled one is submitted again. ``job.restart()`` runs a job again as OpenWeights
does, a completed one included (with ``force=True``, so its GPU stage runs and its result is replaced).

As in OpenWeights, ``job.params["validated_params"]`` holds the parameters with every default filled
and ``finetuned_model_id`` resolved; ``job.runs`` lists its runs (GPU-stage attempts), oldest first.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import FlowRun, StateType
from pydantic import BaseModel

from blocks.storage import STORE_BLOCK_ENV
from client import runs
from client.runs import (
    CANCELED,
    COMPLETED,
    FAILED,
    FINAL_STATUSES,
    IN_PROGRESS,
    PENDING,
    STATE_TO_STATUS,
    Run,
)
from jobs.costs import JobCost
from jobs.hardware import FORCE_FIELD
from jobs.records import stale_reason
from jobs.registry import get_job_spec, job_types
from jobs.tags import submission_tags
from jobs.validation import InvalidJobError, check_inputs, validate_params
from store.artifact_store import ArtifactStore
from store.layout import result_key

__all__ = [
    "CANCELED",
    "COMPLETED",
    "FAILED",
    "FINAL_STATUSES",
    "IN_PROGRESS",
    "PENDING",
    "Job",
    "Jobs",
    "job_status",
]


def job_status(control_state: StateType | None, has_result: bool) -> str:
    """OpenWeights' status of a job: its stored result wins over a finished control run (a later failed
    resubmission does not undo it); a control run still pending or running (a forced re-run, or one
    replacing a result whose outputs are gone) is what the job is doing now."""
    if has_result and (control_state is None or STATE_TO_STATUS[control_state] not in (PENDING, IN_PROGRESS)):
        return COMPLETED
    if control_state is None:
        return PENDING
    status = STATE_TO_STATUS[control_state]
    return FAILED if status == COMPLETED else status  # completed without a result record: something is wrong


def job_type_of_id(job_id: str) -> str | None:
    prefix = job_id.split("-", 1)[0]
    return next((t for t in job_types() if get_job_spec(t).id_prefix == prefix), None)


class Job:
    """One job: ``id``, ``type``, ``status``, ``params``, ``outputs``, ``metrics``; dict-style access works too."""

    def __init__(self, manager: Jobs, job_id: str, job_type: str | None):
        self._manager = manager
        self.id = job_id
        self.type = job_type
        self.status = PENDING
        self.params: dict[str, Any] = {}
        self.outputs: dict[str, str] = {}
        self.metrics: dict[str, Any] = {}
        self.created_at: datetime | None = None
        self.flow_runs: list[FlowRun] = []

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, type={self.type!r}, status={self.status!r})"

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    @property
    def model(self) -> str | None:
        return self.params.get("model")

    @property
    def cost(self) -> JobCost | None:
        """What the job's pods cost (``cost`` in its result record; ``billed`` False on the local process
        pool); None until it completed, or for a record written before costs were kept."""
        key = result_key(self.id)
        store = self._manager._store
        cost = store.read_json(key).get("cost") if store.exists(key) else None
        return JobCost.model_validate(cost) if cost else None

    def refresh(self) -> Job:
        self._manager._load(self)
        return self

    def wait(self, timeout: float | None = None, poll_seconds: float = 2.0) -> Job:
        """Block until the job is completed, failed or canceled; returns the job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.refresh().status not in FINAL_STATUSES:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} is still {self.status} after {timeout:.0f}s")
            time.sleep(poll_seconds)
        return self

    def cancel(self) -> Job:
        """Cancel every unfinished flow run of the job (its GPU stage, and so its pod, included)."""
        for flow_run in runs.job_runs(self.id):
            runs.cancel(flow_run.id, message="canceled through the client")
        return self.refresh()

    def restart(self) -> Job:
        """Run the job again, as OpenWeights does: a new control run, so a new run of its GPU stage.

        A completed job runs again too, with ``force=True``: its stored result is not served, and the
        new run's result replaces it. A pending or running job is returned as it is. This object is
        updated too (OpenWeights' ``restart`` updates the job it is called on).
        """
        self.__dict__.update(self._manager.restart(self.id).__dict__)
        return self

    @property
    def runs(self) -> list[Run]:
        """The job's runs (attempts of its GPU stage), oldest first; each has ``status`` and ``logs()``."""
        return runs.list_runs(self.id)

    def logs(self) -> str:
        """The job's log lines from all its flow runs, oldest first (the last lines of a run that just ended included)."""
        return "\n".join(runs.settled_logs(runs.job_runs(self.id)))

    def download(self, target_dir: str | Path, only_last_run: bool = True) -> Path:
        """Copy every output of the job into ``target_dir`` (one entry per output name), and the log of its
        last run (``<run id>.log``) or, with ``only_last_run=False``, of every run (``<run id>/<run id>.log``)."""
        target = Path(target_dir)
        target.mkdir(parents=True, exist_ok=True)
        job_runs = self.runs
        for run in job_runs[-1:] if only_last_run else job_runs:
            run.download(target if only_last_run else target / run.id)
        store = self._manager._store
        for name, uri in self.outputs.items():
            key = store.key_from_uri(uri) if "://" in uri else None
            if key is None:
                if uri.count(":file-") == 1:  # a content-addressed file
                    (target / f"{name}").write_bytes(self._manager._files.content(uri))
                continue
            keys = store.list(key)
            if keys == [key]:
                store.download_file(key, target / f"{name}{Path(key).suffix}")
            else:
                store.download_tree(key, target / name)
        return target


class Jobs:
    """``ow.jobs``: retrieve, list and cancel jobs of any type."""

    def __init__(self, store: ArtifactStore, files, store_block: str | None = None):
        self._store = store
        self._files = files
        # A store block the client was given travels with each job it submits: the control flow runs
        # with OW_STORE_BLOCK set to it, and hands it to the GPU stage, so the job reads and writes the
        # store the client hashed and validated against, not the worker's default.
        self._store_block = store_block

    def retrieve(self, job_id: str) -> Job:
        job = Job(self, job_id, job_type_of_id(job_id))
        self._load(job)
        if not job.flow_runs and not self._store.exists(result_key(job_id)):
            raise LookupError(f"no job {job_id}")
        return job

    def list(self, limit: int = 20, type: str | None = None, status: str | None = None) -> list[Job]:  # noqa: A002 - OpenWeights' name
        """Jobs with their newest activity first."""
        seen: dict[str, Job] = {}
        for flow_run in runs.job_runs(job_type=type, limit=max(limit * 4, 50), gpu_stage=False):
            job_id = runs.job_id_of(flow_run)
            if job_id and job_id not in seen:
                seen[job_id] = self.retrieve(job_id)
        jobs = [job for job in seen.values() if status is None or job.status == status]
        return jobs[:limit]

    def find(self, **params: Any) -> list[Job]:
        """Jobs whose parameters match every given value, newest first (OpenWeights' ``jobs.find``).

        A value matches the parameter's validated value (defaults filled); a dict matches when it is
        contained in the parameter (``find(meta={"group": "hparams"})``, or
        ``find(validated_params={"seed": 3})`` as OpenWeights' fine-tuning jobs are searched).
        """
        found, seen = [], set()
        for flow_run in runs.job_runs(limit=100_000, gpu_stage=False):
            job_id = runs.job_id_of(flow_run)
            if job_id and job_id not in seen:
                seen.add(job_id)
                job = self.retrieve(job_id)
                if all(_contains(_param(job.params, key), value) for key, value in params.items()):
                    found.append(job)
        return found

    def cancel(self, job_id: str) -> Job:
        return self.retrieve(job_id).cancel()

    def restart(self, job_id: str) -> Job:
        """Submit a job again with its own parameters: a failed or canceled one as it was, a completed one
        with ``force=True`` (its stored result would otherwise be served); a pending or running one is
        returned as it is."""
        job = self.retrieve(job_id)
        if job.status not in (FAILED, CANCELED, COMPLETED) or job.type is None:
            return job
        raw = {key: value for key, value in job.params.items() if key != "validated_params"}
        if job.status == COMPLETED:
            raw[FORCE_FIELD] = True
        return self._launch(job, validate_params(get_job_spec(job.type), raw), raw)

    def submit(self, job_type: str, params: dict[str, Any]) -> Job:
        """Validate, hash, and submit unless an identical job is pending, running or completed."""
        from jobs.finetune import configured_hf_org, missing_hub_org

        spec = get_job_spec(job_type)
        config = validate_params(spec, params)
        problem = (
            missing_hub_org(config, configured_hf_org()) if getattr(config, "push_to_hub", False) else None
        )
        if problem:
            raise InvalidJobError(job_type, [problem])  # before a GPU trains a model it could not push
        job_id = spec.job_id(config, check_inputs(spec, config, self._store).inputs)
        job = Job(self, job_id, job_type)
        self._load(job)
        rerun = getattr(config, FORCE_FIELD, False) or (
            job.status == COMPLETED and stale_reason(self._store, job_id)
        )
        if (
            not rerun
            and job.status in (PENDING, IN_PROGRESS, COMPLETED)
            and (job.flow_runs or job.status == COMPLETED)
        ):
            return job
        return self._launch(job, config, config.model_dump(mode="json", exclude_unset=True))

    def _launch(self, job: Job, config: BaseModel, params: dict[str, Any]) -> Job:
        """Create the job's control flow run (it runs the GPU stage unless the job's result is stored)."""
        flow_run = runs.submit(
            get_job_spec(job.type).control_deployment(config),
            params,
            tags=submission_tags(job.id, job.type),
            job_variables={"env": {STORE_BLOCK_ENV: self._store_block}} if self._store_block else None,
        )
        job.flow_runs = [flow_run, *job.flow_runs]
        job.status = PENDING
        return job

    def _load(self, job: Job) -> None:
        record_key = result_key(job.id)
        job.flow_runs = runs.job_runs(job.id)
        control = [run for run in job.flow_runs if run.flow_id and not _is_gpu_stage(run)]
        record = self._store.read_json(record_key) if self._store.exists(record_key) else None
        newest = control[0] if control else None
        job.status = job_status(newest.state.type if newest and newest.state else None, record is not None)
        if job.type is None:
            job.type = (record or {}).get("job_type") or (runs.job_type_of(newest) if newest else None)
        if record is not None:
            job.params, job.outputs, job.metrics = (
                dict(record["params"]),
                record["outputs"],
                record["metrics"],
            )
        elif newest is not None:
            job.params = dict(newest.parameters)
        if job.type is not None and job.params:
            job.params["validated_params"] = validated_params(job.type, job.id, job.params, job.outputs)
        job.created_at = min((run.created for run in job.flow_runs if run.created), default=None)


def _is_gpu_stage(flow_run: FlowRun) -> bool:
    return {"job_type", "job_id", "params"} <= set(flow_run.parameters)  # the gpu-stage flow's signature


HUB_URL = "https://huggingface.co/"


def validated_params(
    job_type: str, job_id: str, params: dict[str, Any], outputs: dict[str, str]
) -> dict[str, Any]:
    """The job's parameters with defaults filled and ``finetuned_model_id`` resolved (OpenWeights' ``validated_params``).

    The name is the pushed repository's once the job pushed one; before, it is filled with the
    configured Hugging Face organisation (``{org_id}`` stays as it is while none is configured).
    """
    raw = {key: value for key, value in params.items() if key != "validated_params"}
    try:
        config = validate_params(get_job_spec(job_type), raw)
    except (InvalidJobError, KeyError):  # parameters of an older code version: shown as they were stored
        return raw
    validated = config.model_dump(mode="json")
    if hasattr(config, "output_model_name"):
        from jobs.finetune import configured_hf_org

        hub = outputs.get("hub", "")
        validated["finetuned_model_id"] = (
            hub.removeprefix(HUB_URL)
            if hub.startswith(HUB_URL)
            else config.output_model_name(job_id, configured_hf_org() or "{org_id}")
        )
    return validated


def _param(params: dict[str, Any], key: str) -> Any:
    validated = params.get("validated_params") or {}
    return validated[key] if key in validated else params.get(key, _MISSING)


_MISSING = object()


def _contains(actual: Any, wanted: Any) -> bool:
    """``wanted`` equals ``actual``, or (a dict) is contained in it key by key (as Postgres' ``@>`` on JSON)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            key in actual and _contains(actual[key], value) for key, value in wanted.items()
        )
    return actual is not _MISSING and actual == wanted


class JobFactory:
    """``ow.fine_tuning``, ``ow.inference``, …: ``create(**params)`` → :class:`Job`."""

    def __init__(self, jobs: Jobs, job_type: str, renamed: dict[str, str] | None = None):
        self._jobs = jobs
        self.job_type = job_type
        self._renamed = renamed or {}

    def create(self, **params: Any) -> Job:
        for old, new in self._renamed.items():  # OpenWeights' spellings of a few parameters
            if old in params:
                params[new] = params.pop(old)
        return self._jobs.submit(self.job_type, params)

    def retrieve(self, job_id: str) -> Job:
        return self._jobs.retrieve(job_id)

    def list(self, limit: int = 20) -> list[Job]:
        return self._jobs.list(limit=limit, type=self.job_type)
