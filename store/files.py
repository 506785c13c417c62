"""Content-addressed files: same bytes → same ID, stored once.

A file ID has OpenWeights' form ``<purpose>:file-<sha256 hex>`` (see :mod:`jobs.file_ids`).
Layout in the artifact store::

    files/<sha256>/content           the bytes, shared by every purpose
    files/<sha256>/<purpose>.json    the record of a validated upload for that purpose

Uploading hashes and validates in one streaming pass (constant memory), refuses the file
before anything is written when validation fails, and skips the write when the content is
already stored.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pydantic import BaseModel, Field

from jobs.datasets import validate_lines
from jobs.file_ids import PURPOSE_PATTERN, is_file_id, make_file_id, parse_file_id  # noqa: F401 - re-exported
from store.artifact_store import ArtifactStore


class FileRecord(BaseModel):
    """What the store knows about an uploaded file."""

    id: str = Field(description="Content ID, <purpose>:file-<sha256>.")
    object: str = "file"
    purpose: str
    sha256: str
    bytes: int
    filename: str
    rows: int | None = Field(None, description="JSONL rows, for validated purposes.")
    created_at: float


class UnknownFileError(LookupError):
    """A file ID that does not name a stored file."""


def content_key(digest: str) -> str:
    return f"files/{digest}/content"


def record_key(purpose: str, digest: str) -> str:
    return f"files/{digest}/{purpose}.json"


def upload_file(
    store: ArtifactStore,
    source: str | Path | IO[bytes],
    purpose: str,
    filename: str | None = None,
) -> FileRecord:
    """Validate and store a file once; returns its record (the existing one if already stored)."""
    if not re.fullmatch(PURPOSE_PATTERN, purpose or ""):
        raise ValueError(f"purpose must match {PURPOSE_PATTERN} (lower-case letters, digits, _), got {purpose!r}")
    if isinstance(source, (str, Path)):
        filename = filename or Path(source).name
        with open(source, "rb") as handle:
            return _upload(store, handle, purpose, filename, reopen=lambda: open(source, "rb"))
    filename = filename or Path(getattr(source, "name", "upload")).name
    return _upload(store, source, purpose, filename, reopen=None)


def _upload(store, handle, purpose, filename, reopen) -> FileRecord:
    digest = hashlib.sha256()
    size = 0

    def hashed_lines() -> Iterator[bytes]:
        nonlocal size
        for line in handle:
            digest.update(line)
            size += len(line)
            yield line

    rows = validate_lines(hashed_lines(), purpose, filename)
    hex_digest = digest.hexdigest()
    record = FileRecord(
        id=make_file_id(purpose, hex_digest),
        purpose=purpose,
        sha256=hex_digest,
        bytes=size,
        filename=filename,
        rows=rows,
        created_at=time.time(),
    )
    if store.exists(record_key(purpose, hex_digest)):
        return FileRecord.model_validate(store.read_json(record_key(purpose, hex_digest)))
    if not store.exists(content_key(hex_digest)):
        if reopen is not None:
            with reopen() as again:
                store.upload_stream(content_key(hex_digest), again)
        else:
            handle.seek(0)
            store.upload_stream(content_key(hex_digest), handle)
    # The record is written after the content, so a record always points at complete bytes.
    store.write_json(record_key(purpose, hex_digest), record.model_dump())
    return record


def get_file_record(store: ArtifactStore, file_id: str) -> FileRecord:
    """The record of a stored file; :class:`UnknownFileError` names what is missing."""
    purpose, digest = parse_file_id(file_id)
    key = record_key(purpose, digest)
    if store.exists(key):
        return FileRecord.model_validate(store.read_json(key))
    if store.exists(content_key(digest)):
        others = [name.removesuffix(".json") for name in store.children(f"files/{digest}") if name.endswith(".json")]
        raise UnknownFileError(
            f"file {file_id} is stored, but was uploaded with purpose {', '.join(others) or 'unknown'}, not "
            f"{purpose!r}; upload it again with --purpose {purpose}"
        )
    raise UnknownFileError(f"unknown file ID {file_id}: no such file in the artifact store {store.base_url}")


def read_file_bytes(store: ArtifactStore, file_id: str) -> bytes:
    get_file_record(store, file_id)
    return store.read_bytes(content_key(parse_file_id(file_id)[1]))


def open_file(store: ArtifactStore, file_id: str) -> IO[bytes]:
    get_file_record(store, file_id)
    return store.open(content_key(parse_file_id(file_id)[1]), "rb")


def download_file(store: ArtifactStore, file_id: str, cache_dir: Path) -> Path:
    """A local copy of a stored file (cached by digest, so repeated jobs reuse it)."""
    get_file_record(store, file_id)
    digest = parse_file_id(file_id)[1]
    local = Path(cache_dir) / digest
    if local.exists() and local.stat().st_size == store.size(content_key(digest)):
        return local
    return store.download_file(content_key(digest), local)


def list_files(store: ArtifactStore) -> list[FileRecord]:
    records = []
    for key in store.list("files"):
        if key.endswith(".json"):
            records.append(FileRecord.model_validate(store.read_json(key)))
    return sorted(records, key=lambda r: r.created_at)
