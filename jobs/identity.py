"""Content identity of jobs: the one function every job type uses to get its ID.

A job's ID is ``<prefix>-<sha256 hex>`` where the digest covers, in a canonical JSON encoding:

    {"code_version": …, "inputs": […], "job_type": …, "params": {…}}

- ``job_type``: the registered job type (``finetune``, ``inference``, …);
- ``params``: the job's parameters *after* validation, with every default filled in, so that
  spelling a default out and leaving it implicit give the same job — less the hardware request
  (``allowed_hardware``, ``requires_vram_gb``, ``image``), which says where a job runs, not what it
  computes (:func:`jobs.registry.identity_params`);
- ``inputs``: the content IDs (``<purpose>:file-<sha256>``) of the input files and the
  fingerprints of input models (a local model directory's content digest), sorted and
  de-duplicated — they already name the bytes, so a changed byte changes the ID;
- ``code_version``: a digest of the source files that implement the job type, so a change in
  the job's code makes a new job instead of silently reusing an old result.

Canonical JSON: keys sorted, no insignificant whitespace, UTF-8 (not ASCII-escaped), floats in
Python's shortest round-trip form, NaN/Infinity refused. ``docs/job-identity.md`` gives fixed
test vectors; ``tests/test_identity.py`` pins them.

A job ID names a directory on a GPU machine and keys in the store, so its shape is fixed
(:func:`check_job_id`): ``<prefix>-<64 hex digits>``, then the job's ``job_id_suffix`` if it set
one (:data:`JobIdSuffix`), then ``-<8 hex digits>`` for a service (every deployment is its own run).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import StringConstraints

# One pattern for every job type with a job_id_suffix: it becomes part of a file name and of store keys.
JOB_ID_SUFFIX_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
JobIdSuffix = Annotated[str, StringConstraints(pattern=JOB_ID_SUFFIX_PATTERN)]
"""A ``job_id_suffix`` parameter: 1–64 letters, digits, ``.``, ``_`` or ``-`` (no ``/``, no whitespace)."""

_SUFFIX = JOB_ID_SUFFIX_PATTERN.removeprefix("^").removesuffix("$")
JOB_ID_RE = re.compile(rf"(?P<prefix>[a-z][a-z0-9]*)-[0-9a-f]{{64}}(?:-{_SUFFIX})?(?:-[0-9a-f]{{8}})?")


def canonical_json(value: Any) -> bytes:
    """The canonical byte encoding hashed for identities (see module docstring)."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")


def compute_job_id(
    job_type: str,
    params: Mapping[str, Any],
    inputs: Iterable[str],
    code_version: str,
    prefix: str = "job",
) -> str:
    """The content-hash ID of a job; identical inputs give identical IDs on every machine."""
    document = {
        "job_type": job_type,
        "params": dict(params),
        "inputs": sorted(set(inputs)),
        "code_version": code_version,
    }
    return f"{prefix}-{hashlib.sha256(canonical_json(document)).hexdigest()}"


def source_digest(paths: Iterable[Path], root: Path) -> str:
    """SHA-256 over the given source files (relative path + bytes), independent of order.

    Used as a job type's code version: editing any of its modules changes every job ID of
    that type, so stale cached results are never returned for new code.
    """
    digest = hashlib.sha256()
    for path in sorted({Path(p).resolve() for p in paths}):
        relative = path.relative_to(root.resolve()).as_posix()
        digest.update(relative.encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode("ascii") + b"\n")
    return digest.hexdigest()


def check_job_id(value: Any, prefix: str | None = None) -> str:
    """``value`` if it has the shape of a job ID (of the job type with ``prefix``, if given); else ValueError.

    Flows that take a job ID from outside (a hand-started ``gpu-stage`` run) call this before the
    ID names a directory or a store key: ``"/"`` or ``"../x"`` is refused, never joined to a path.
    """
    match = JOB_ID_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        shown = repr(value) if len(repr(value)) <= 100 else repr(value)[:97] + "…"
        raise ValueError(
            f"job_id: {shown} is not a job ID; expected <type prefix>-<64 hex digits>[-<job_id_suffix>] "
            "as the control flow prints it"
        )
    if prefix is not None and match["prefix"] != prefix:
        raise ValueError(f"job_id: {value!r} is not the ID of this job type (IDs start with {prefix}-)")
    return value
