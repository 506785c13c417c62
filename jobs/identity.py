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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


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
