"""The artifact store: one place where datasets, adapters, outputs, logs and results live.

A thin layer over fsspec so the same code writes to a local directory (the embedded default)
or to any S3-compatible bucket (AWS, MinIO, R2, … through s3fs). Keys are ``/``-separated
paths relative to the store's base URL; callers never build filesystem paths themselves.

Writes of single objects are atomic: a reader sees the old object or the new one, never half
of one (S3 PUTs are atomic; on a local disk we write a temporary file and rename it). Multi-file
artifacts (adapters, checkpoints) are made complete by writing a marker object last.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

CHUNK_BYTES = 1 << 20


class ArtifactStore:
    """Artifacts under ``base_url`` (``/abs/dir``, ``file:///abs/dir`` or ``s3://bucket/prefix``)."""

    def __init__(self, base_url: str, storage_options: dict[str, Any] | None = None):
        self.base_url = _normalise_base_url(base_url)
        self.storage_options = dict(storage_options or {})
        self._fs = None

    def __repr__(self) -> str:  # never show storage_options: they may hold credentials
        return f"ArtifactStore({self.base_url!r})"

    @property
    def protocol(self) -> str:
        return self.base_url.split("://", 1)[0] if "://" in self.base_url else "file"

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def fs(self):
        if self._fs is None:
            import fsspec

            self._fs = fsspec.filesystem(self.protocol, **self.storage_options)
        return self._fs

    # -- addressing -------------------------------------------------------------------------

    def path(self, key: str) -> str:
        """The filesystem path fsspec uses for ``key`` (bucket/prefix/key on S3)."""
        key = _clean_key(key)
        root = self.base_url.split("://", 1)[1] if "://" in self.base_url else self.base_url
        return posixpath.join(root, key) if key else root

    def uri(self, key: str) -> str:
        """A URL a human (or another tool) can use to find ``key``: ``file:///…`` or ``s3://…``."""
        return f"{self.protocol}://{self.path(key)}"

    def key_from_uri(self, uri: str) -> str | None:
        """The key of ``uri`` if it points into this store, else None."""
        prefix = self.uri("")
        if uri == prefix:
            return ""
        if uri.startswith(prefix.rstrip("/") + "/"):
            return uri[len(prefix.rstrip("/")) + 1 :]
        return None

    # -- objects ----------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def open(self, key: str, mode: str = "rb") -> IO:
        """Open an object for reading (``rb``/``r``). Use the write helpers to write."""
        if "r" not in mode:
            raise ValueError("ArtifactStore.open is read-only; use write_bytes/put_file/upload_stream")
        return self.fs.open(self.path(key), mode)

    def read_bytes(self, key: str) -> bytes:
        with self.open(key, "rb") as handle:
            return handle.read()

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_bytes(self, key: str, data: bytes) -> str:
        """Atomically write ``data`` at ``key``; returns the object's URI."""
        return self.upload_stream(key, _BytesReader(data))

    def write_json(self, key: str, value: Any) -> str:
        return self.write_bytes(key, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))

    def upload_stream(self, key: str, stream: IO[bytes]) -> str:
        """Copy a readable binary stream to ``key`` in bounded memory, atomically."""
        target = self.path(key)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            temporary = f"{target}.partial-{uuid.uuid4().hex}"
            try:
                with open(temporary, "wb") as out:
                    shutil.copyfileobj(stream, out, CHUNK_BYTES)
                os.replace(temporary, target)
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
        else:
            with self.fs.open(target, "wb") as out:
                shutil.copyfileobj(stream, out, CHUNK_BYTES)
        return self.uri(key)

    def put_file(self, local_path: str | Path, key: str) -> str:
        with open(local_path, "rb") as handle:
            return self.upload_stream(key, handle)

    def download_file(self, key: str, local_path: str | Path) -> Path:
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = local_path.with_name(f".{local_path.name}.partial-{uuid.uuid4().hex}")
        try:
            with self.open(key, "rb") as source, temporary.open("wb") as out:
                shutil.copyfileobj(source, out, CHUNK_BYTES)
            os.replace(temporary, local_path)
        finally:
            temporary.unlink(missing_ok=True)
        return local_path

    # -- trees --------------------------------------------------------------------------------

    def list(self, prefix: str) -> list[str]:
        """Keys of all objects under ``prefix`` (recursive), relative to the store root, sorted."""
        root = self.path(prefix)
        if not self.fs.exists(root):
            return []
        base = self.path("")
        found = []
        for path in self.fs.find(root):
            if ".partial-" in posixpath.basename(path):
                continue
            found.append(posixpath.relpath(_strip_protocol(path), _strip_protocol(base)))
        return sorted(found)

    def children(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (one level), sorted."""
        root = self.path(prefix)
        if not self.fs.exists(root):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(root, detail=False))

    def upload_tree(self, local_dir: str | Path, prefix: str) -> str:
        """Upload every file under ``local_dir`` to ``prefix``; returns the prefix URI."""
        local_dir = Path(local_dir)
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            self.put_file(path, f"{_clean_key(prefix)}/{path.relative_to(local_dir).as_posix()}")
        return self.uri(prefix)

    def download_tree(self, prefix: str, local_dir: str | Path) -> Path:
        """Download every object under ``prefix`` into ``local_dir`` (created)."""
        local_dir = Path(local_dir)
        prefix = _clean_key(prefix)
        for key in self.list(prefix):
            self.download_file(key, local_dir / key[len(prefix) + 1 :])
        return local_dir

    def delete(self, prefix: str) -> None:
        """Remove an object or a whole tree; missing is fine."""
        path = self.path(prefix)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def walk_lines(self, key: str) -> Iterator[bytes]:
        """Lines of an object, streamed."""
        with self.open(key, "rb") as handle:
            yield from handle


class _BytesReader:
    """Minimal readable stream over bytes (avoids copying into io.BytesIO for big payloads)."""

    def __init__(self, data: bytes):
        self._view = memoryview(data)
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = len(self._view) - self._offset
        chunk = self._view[self._offset : self._offset + size]
        self._offset += len(chunk)
        return chunk.tobytes()


def _clean_key(key: str) -> str:
    key = key.strip("/")
    parts = [part for part in key.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise ValueError(f"artifact key may not contain '..': {key!r}")
    return "/".join(parts)


def _normalise_base_url(base_url: str) -> str:
    base_url = os.path.expanduser(str(base_url))
    if "://" not in base_url:
        return f"file://{os.path.abspath(base_url)}"
    if base_url.startswith("file://"):
        return f"file://{os.path.abspath(base_url[len('file://'):])}"
    return base_url.rstrip("/")


def _strip_protocol(path: str) -> str:
    return path.split("://", 1)[1] if "://" in path else path
