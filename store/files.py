"""Content-addressed files: same bytes → same ID, stored once.

A file ID has OpenWeights' form ``<purpose>:file-<sha256 hex>`` (see :mod:`jobs.file_ids`).
Layout in the artifact store::

    files/<sha256>/content           the bytes, shared by every purpose
    files/<sha256>/<purpose>.json    the record of a validated upload for that purpose

Uploading is two reads of the source: :func:`check_file` hashes and validates it in one
streaming pass (constant memory) and refuses it before anything is written; then
:func:`store_checked_file` sends the bytes, hashing them again as they go. A record must always
describe complete bytes, so:

- the content lands at ``files/<sha256>/content`` whole or not at all (see
  :mod:`store.artifact_store`), and only if the bytes sent hash to the checked digest — a file
  changed between the two reads is refused (:class:`FileChangedError`), nothing stored;
- the record is written after its content;
- content already stored is reused only if it is intact: with a record, its size must match
  (content written by this module is verified before it lands; the size check repairs what an
  older, non-atomic write truncated); without one, its size and hash are checked. Content that
  fails the check is rewritten.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pydantic import BaseModel, Field

from jobs.datasets import validate_lines
from jobs.file_ids import PURPOSE_PATTERN, is_file_id, make_file_id, parse_file_id  # noqa: F401 - re-exported
from store.artifact_store import CHUNK_BYTES, ArtifactStore, ContentMismatchError


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


class FileChangedError(ValueError):
    """The file's bytes changed between the check and the upload; nothing was stored."""


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
    return store_checked_file(store, check_file(source, purpose, filename), source)


def check_file(source: str | Path | IO[bytes], purpose: str, filename: str | None = None) -> FileRecord:
    """Hash and validate a local file or binary stream in one streaming pass; writes nothing.

    Returns the record the upload will have; :func:`store_checked_file` stores it.
    """
    if not re.fullmatch(PURPOSE_PATTERN, purpose or ""):
        raise ValueError(f"purpose must match {PURPOSE_PATTERN} (lower-case letters, digits, _), got {purpose!r}")
    if isinstance(source, (str, Path)):
        filename = filename or Path(source).name
        with open(source, "rb") as handle:
            return _check(handle, purpose, filename)
    filename = filename or Path(getattr(source, "name", "upload")).name
    return _check(source, purpose, filename)


def _check(handle, purpose, filename) -> FileRecord:
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
    return FileRecord(
        id=make_file_id(purpose, hex_digest),
        purpose=purpose,
        sha256=hex_digest,
        bytes=size,
        filename=filename,
        rows=rows,
        created_at=time.time(),
    )


def store_checked_file(store: ArtifactStore, record: FileRecord, source: str | Path | IO[bytes]) -> FileRecord:
    """Store the bytes ``record`` describes, read again from ``source``; returns the stored record.

    The bytes are hashed as they are sent: if ``source`` no longer matches ``record``,
    :class:`FileChangedError` is raised and nothing is stored. Stored content that does not
    match is rewritten (see the module docstring); intact content is not sent again.
    """
    key = record_key(record.purpose, record.sha256)
    if store.exists(key):
        stored = FileRecord.model_validate(store.read_json(key))
        if _stored_size(store, record.sha256) != stored.bytes:
            _write_content(store, record, source)
        return stored
    if not _content_is_intact(store, record):
        _write_content(store, record, source)
    # The record is written after the content, so a record always points at complete bytes.
    store.write_json(key, record.model_dump())
    return record


def _stored_size(store: ArtifactStore, digest: str) -> int | None:
    try:  # one request on S3, where exists-then-size would be two
        return store.size(content_key(digest))
    except FileNotFoundError:
        return None


def _content_is_intact(store: ArtifactStore, record: FileRecord) -> bool:
    if _stored_size(store, record.sha256) != record.bytes:
        return False
    digest = hashlib.sha256()
    with store.open(content_key(record.sha256), "rb") as stored:
        while chunk := stored.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest() == record.sha256


def _write_content(store: ArtifactStore, record: FileRecord, source: str | Path | IO[bytes]) -> None:
    try:
        with _reopen(source) as stream:
            store.upload_stream(content_key(record.sha256), stream, expected_sha256=record.sha256)
    except ContentMismatchError as exc:
        raise FileChangedError(
            f"{record.filename} changed while it was being uploaded: it was checked as {record.bytes} bytes "
            f"with sha256 {record.sha256}, but the {exc.sent_bytes} bytes read for the upload hash to "
            f"{exc.sent_sha256}; nothing was stored. Upload it again once nothing is writing to it."
        ) from None


@contextmanager
def _reopen(source: str | Path | IO[bytes]) -> Iterator[IO[bytes]]:
    """The source from its first byte: a path opened again, a stream rewound (and left open)."""
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            yield handle
    else:
        source.seek(0)
        yield source


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
