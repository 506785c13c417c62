"""What every job's GPU-stage function receives and returns.

The GPU-stage flow builds a :class:`StageContext` (store, scratch space, reporter, secrets) and
calls the job type's stage function with the validated parameters; the function returns a
:class:`StageResult`. Stage functions are plain Python, so tests and scripts call them too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute.reporting import LoggingReporter, Reporter
from jobs.model_refs import ResolvedModel, resolve_adapter, resolve_model
from store import layout
from store.artifact_store import ArtifactStore
from store.files import download_file


@dataclass
class StageContext:
    job_id: str
    store: ArtifactStore
    work_dir: Path  # scratch space of this job on this machine
    cache_dir: Path  # content-addressed downloads shared by jobs on this machine
    reporter: Reporter = field(default_factory=LoggingReporter)
    secrets: dict[str, str] = field(default_factory=dict)
    pod_id: str | None = None  # set when the stage runs in a RunPod pod (public URLs go through its proxy)
    # Where a stage keeps a secret it creates (e.g. an API token) for clients to read; Prefect
    # Secret blocks in the GPU-stage flow, a dict in scripts and tests.
    save_secret: Callable[[str, str], None] = field(default=lambda name, value: None)
    delete_secret: Callable[[str], None] = field(default=lambda name: None)
    # A secret's value if it exists, else None: a recovered attempt of a job reads what the lost one
    # saved (an API deployment keeps the token its clients hold).
    read_secret: Callable[[str], str | None] = field(default=lambda name: None)
    # Whether this stage is being cancelled (no recovery follows), as opposed to stopped by its pod or
    # machine going away; asked when the stage is stopped from outside.
    cancelling: Callable[[], bool] = field(default=lambda: False)

    @property
    def job_prefix(self) -> str:
        return layout.job_prefix(self.job_id)

    def local_file(self, file_id: str) -> Path:
        """A local copy of an uploaded file (by content ID)."""
        return download_file(self.store, file_id, self.cache_dir / "files")

    def local_model(self, reference: str) -> ResolvedModel:
        """Local directories for a model reference (hub ID, path, job ID, artifact URI)."""
        return resolve_model(reference, self.store, self.cache_dir)

    def local_adapter(self, reference: str) -> str:
        """The local directory of the LoRA adapter a reference names (to serve it on its base)."""
        return resolve_adapter(reference, self.store, self.cache_dir)


@dataclass
class StageResult:
    outputs: dict[str, str]  # name → URI of each output in the store
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # Store prefixes that only matter until the result record exists (a training job's checkpoints):
    # the GPU stage deletes them after writing result.json, so a crash before that resumes from them.
    disposable_prefixes: list[str] = field(default_factory=list)
