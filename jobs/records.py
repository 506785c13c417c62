"""The result record of a job, stored as ``jobs/<job_id>/result.json`` when the job completes.

Written last by the GPU stage, so its presence means every output it lists is complete. It is
also what the control tier caches under the job ID and what a later job reads to chain from it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from jobs.costs import JobCost
from store.layout import result_key


class JobRecord(BaseModel):
    job_id: str
    job_type: str
    status: str = "completed"
    params: dict[str, Any] = Field(description="Parameters with defaults filled in.")
    base_model: str | None = Field(None, description="The model reference the job started from, if any.")
    outputs: dict[str, str] = Field(
        default_factory=dict, description="Output name → URI in the artifact store."
    )
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


def missing_outputs(store: Any, record: dict[str, Any]) -> dict[str, str]:
    """The outputs of ``record`` (name → URI) that point into ``store`` and are no longer there: deleted,
    expired by a bucket lifecycle rule, or written to another store. Outputs outside the store (a hub
    repository, a content ID) are not checked."""
    gone = {}
    for name, uri in (record.get("outputs") or {}).items():
        key = store.key_from_uri(uri) if isinstance(uri, str) and "://" in uri else None
        if key and not store.exists(key):
            gone[name] = uri
    return gone


def stale_reason(store: Any, job_id: str) -> str | None:
    """Why job ``job_id``'s stored result cannot be served as it is (its record or an output is gone);
    None when it is whole, or was never stored."""
    if not store.exists(result_key(job_id)):
        return None
    gone = missing_outputs(store, store.read_json(result_key(job_id)))
    if gone:
        return (
            "its "
            + ", ".join(f"{name} ({uri})" for name, uri in gone.items())
            + " no longer in the artifact store"
        )
    return None
