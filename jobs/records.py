"""The result record of a job, stored as ``jobs/<job_id>/result.json`` when the job completes.

Written last by the GPU stage, so its presence means every output it lists is complete. It is
also what the control tier caches under the job ID and what a later job reads to chain from it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from jobs.costs import JobCost


class JobRecord(BaseModel):
    job_id: str
    job_type: str
    status: str = "completed"
    params: dict[str, Any] = Field(description="Parameters with defaults filled in.")
    base_model: str | None = Field(None, description="The model reference the job started from, if any.")
    outputs: dict[str, str] = Field(default_factory=dict, description="Output name → URI in the artifact store.")
    metrics: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    code_version: str
    flow_run_id: str | None = None
    started_at: float
    completed_at: float
    cost: JobCost | None = Field(
        None,
        description="What the job cost over all its GPU-stage attempts; added by the control tier once "
        "the stage's pods are gone (None in the record the GPU stage itself writes).",
    )


def result_key(job_id: str) -> str:
    return f"jobs/{job_id}/result.json"
