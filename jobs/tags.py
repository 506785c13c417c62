"""The tags our flow runs carry: the one owner of their spelling.

Clients find a job's runs by these tags, the control tier puts them on both of a job's runs (its
control flow and its GPU stage), and the RunPod worker copies them into each pod's cost record, so
spend can be reported by job, job type, deployment and submitter. Pure: no Prefect import.

- ``ow-job:<job id>`` and ``ow-type:<job type>`` on every control flow and GPU stage.
- ``ow-deployment:<flow>/<deployment>``: the deployment the job was submitted through (GPU stage only;
  the control flow *is* that deployment's run).
- ``submitter:<name>``: who submitted the job. The client adds ``submitter:$OW_SUBMITTER`` (else the login
  name); a run started from the UI can carry one by hand. The GPU stage inherits it from its control
  flow; identical submissions share one GPU stage, whose spend goes to the first submitter.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterable

JOB_TAG_PREFIX = "ow-job:"
TYPE_TAG_PREFIX = "ow-type:"
DEPLOYMENT_TAG_PREFIX = "ow-deployment:"
SUBMITTER_TAG_PREFIX = "submitter:"
SUBMITTER_ENV = "OW_SUBMITTER"


def job_tag(job_id: str) -> str:
    return f"{JOB_TAG_PREFIX}{job_id}"


def job_type_tag(job_type: str) -> str:
    return f"{TYPE_TAG_PREFIX}{job_type}"


def deployment_tag(deployment_name: str) -> str:
    return f"{DEPLOYMENT_TAG_PREFIX}{deployment_name}"


def submitter_tag(name: str) -> str:
    return f"{SUBMITTER_TAG_PREFIX}{name}"


def tag_value(tags: Iterable[str], prefix: str) -> str | None:
    """The value of the first tag with ``prefix`` (``ow-job:abc`` → ``abc``), or None."""
    return next((tag[len(prefix) :] for tag in tags if tag.startswith(prefix)), None)


def default_submitter(environ: dict[str, str] | None = None) -> str | None:
    """Who is submitting from this shell: ``OW_SUBMITTER``, else the login name, else None."""
    environ = os.environ if environ is None else environ
    named = (environ.get(SUBMITTER_ENV) or "").strip()
    if named:
        return named
    try:
        return getpass.getuser() or None
    except (KeyError, OSError):  # no passwd entry (a container with an arbitrary uid)
        return None


def inherited_tags(tags: Iterable[str]) -> list[str]:
    """The tags of a control flow that its GPU stage carries too (who to charge)."""
    return sorted(tag for tag in tags if tag.startswith(SUBMITTER_TAG_PREFIX))


def submission_tags(job_id: str, job_type: str, submitter: str | None = None) -> list[str]:
    """The tags a client puts on a job's control flow run when it submits it."""
    who = submitter or default_submitter()
    return [job_tag(job_id), job_type_tag(job_type), *([submitter_tag(who)] if who else [])]
