"""``ow.files``: content-addressed uploads, as OpenWeights offers them.

A purpose may be given in OpenWeights' other spelling (``preferences``); the file is stored, and its
ID named, under the purpose it stands for (``preference:file-…``).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from store.artifact_store import ArtifactStore


class Files:
    def __init__(self, store: ArtifactStore):
        self._store = store

    def upload(self, path: str | Path, purpose: str) -> dict[str, Any]:
        """Validate and store a file; same content → same ID, no second copy. Returns its record (``["id"]``)."""
        from jobs.datasets import canonical_purpose
        from store.files import upload_file

        return upload_file(self._store, path, canonical_purpose(purpose)).model_dump()

    def create(self, file: IO[bytes], purpose: str) -> dict[str, Any]:
        """Like :meth:`upload`, from an open binary file (OpenWeights' ``files.create(file=…, purpose=…)``)."""
        from jobs.datasets import canonical_purpose
        from store.files import upload_file

        return upload_file(self._store, file, canonical_purpose(purpose)).model_dump()

    def content(self, file_id: str) -> bytes:
        from store.files import read_file_bytes

        return read_file_bytes(self._store, file_id)

    def retrieve(self, file_id: str) -> dict[str, Any]:
        from store.files import get_file_record

        return get_file_record(self._store, file_id).model_dump()

    def get_by_id(self, file_id: str) -> dict[str, Any]:
        """The record of an uploaded file: ``id``, ``purpose``, ``filename``, ``bytes``, ``rows``, ``created_at``
        (OpenWeights' name for :meth:`retrieve`); LookupError for an unknown ID."""
        return self.retrieve(file_id)

    def list(self) -> list[dict[str, Any]]:
        from store.files import list_files

        return [record.model_dump() for record in list_files(self._store)]
