"""Where things live in the artifact store: the one owner of the keys more than one module reads or writes.

::

    jobs/<job_id>/result.json                  the job's result record, written last (its outputs are whole)
    jobs/<job_id>/endpoint.json                an API deployment's endpoint record (URL, models, token's Secret)
    jobs/<job_id>/checkpoints/checkpoint-<n>/  training checkpoints              ─┐ deleted once the
    jobs/<job_id>/partial/<stream>/chunk-*.jsonl  rows finished so far (row journal) ─┘ record is written
    jobs/<job_id>/…                            each job type's outputs, named where its stage writes them:
                                               adapter/, merged/, model/, outputs.jsonl, logprobs.jsonl,
                                               outputs/, inspect-logs/, mmlu-pro/, multiple-choice/
    files/<sha256>/content, <purpose>.json     uploaded files and their validation records (store.files)
    prefect-results/<key>                      Prefect's result records (blocks.storage.RESULTS_PREFIX)

Pure: strings only.
"""

from __future__ import annotations

JOBS_ROOT = "jobs"


def job_prefix(job_id: str) -> str:
    """Everything job ``job_id`` stores is under this prefix."""
    return f"{JOBS_ROOT}/{job_id}"


def result_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}/result.json"


def endpoint_key(job_id: str) -> str:
    return f"{job_prefix(job_id)}/endpoint.json"


def checkpoints_prefix(job_prefix: str) -> str:
    """The training checkpoints under a job's prefix (``compute.training.checkpoints``)."""
    return f"{job_prefix.strip('/')}/checkpoints"


def journal_root(job_prefix: str) -> str:
    """Every row journal under a job's prefix (``compute.row_journal``)."""
    return f"{job_prefix.strip('/')}/partial"
