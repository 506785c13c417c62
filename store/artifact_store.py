"""The artifact store: one place where datasets, adapters, outputs, logs and results live.

A thin layer over fsspec so the same code writes to a local directory (the embedded default)
or to any S3-compatible bucket (AWS, MinIO, R2, … through s3fs). Keys are ``/``-separated
paths relative to the store's base URL; callers never build filesystem paths themselves.

Every write lands whole at its key or not at all, because a record in the store (a job's
outputs, a file's record) must always describe complete bytes. A write that breaks midway — its
source fails, the run is cancelled, the bytes do not hash as the caller expected — leaves the old
object at the key, or nothing:

- on a local disk the bytes go to a temporary file in the key's directory, renamed into place
  (``os.replace``) only when all of them were written;
- on S3 a small object is sent in one PUT once it has been read whole, and a large one as a
  multipart upload that is completed only when all its parts were sent, and aborted otherwise
  (fsspec's own ``with fs.open(key, "wb")`` would complete it with what was written so far).

``expected_sha256`` makes a write hash the bytes it sends and refuse a mismatch before they land.
Multi-file artifacts (adapters, checkpoints) are made complete by writing a marker object (or the
record that points at them) last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

CHUNK_BYTES = 1 << 20
# Objects up to this size are read whole and sent in one request (one PUT instead of a multipart
# upload's three); bigger ones stream as multipart uploads in the filesystem's block size.
ONE_REQUEST_BYTES = 8 * CHUNK_BYTES
# Temporary files of unfinished local writes carry this in their name; listings skip them.
PARTIAL_MARK = ".partial-"

logger = logging.getLogger(__name__)


class ContentMismatchError(ValueError):
    """The bytes sent for a key do not hash as the caller expected; nothing was written at the key."""

    def __init__(self, key: str, expected_sha256: str, sent_sha256: str, sent_bytes: int):
        self.key = key
        self.expected_sha256 = expected_sha256
        self.sent_sha256 = sent_sha256
        self.sent_bytes = sent_bytes
        super().__init__(
            f"refused to write {key}: expected sha256 {expected_sha256}, but the {sent_bytes} bytes read "
            f"from the source hash to {sent_sha256}; nothing was written"
        )


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

    def write_bytes(self, key: str, data: bytes, expected_sha256: str | None = None) -> str:
        """Write ``data`` at ``key``, whole or not at all; returns the object's URI."""
        return self.upload_stream(key, _BytesReader(data), expected_sha256=expected_sha256)

    def write_json(self, key: str, value: Any) -> str:
        return self.write_bytes(key, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))

    def upload_stream(self, key: str, stream: IO[bytes], expected_sha256: str | None = None) -> str:
        """Copy a readable binary stream to ``key`` in bounded memory; all of it lands, or nothing.

        With ``expected_sha256`` the bytes are hashed as they are read and sent, and a mismatch
        raises :class:`ContentMismatchError` before anything lands at ``key``.
        """
        digest = hashlib.sha256() if expected_sha256 else None
        sent = 0

        def chunks() -> Iterator[bytes]:
            nonlocal sent
            while chunk := stream.read(CHUNK_BYTES):
                if digest is not None:
                    digest.update(chunk)
                sent += len(chunk)
                yield chunk

        def check_sent() -> None:  # called after the last byte was read, before the write is committed
            if digest is not None and digest.hexdigest() != expected_sha256:
                raise ContentMismatchError(key, expected_sha256, digest.hexdigest(), sent)

        if self.is_local:
            _write_local(self.path(key), chunks(), check_sent)
        else:
            self._write_remote(self.path(key), chunks(), check_sent)
        return self.uri(key)

    def put_file(self, local_path: str | Path, key: str) -> str:
        """Upload a local file to ``key``, whole or not at all."""
        with open(local_path, "rb") as handle:
            return self.upload_stream(key, handle)

    def _write_remote(self, target: str, chunks: Iterator[bytes], check_sent: Callable[[], None]) -> None:
        head: list[bytes] = []
        size = 0
        for chunk in chunks:
            head.append(chunk)
            size += len(chunk)
            if size >= ONE_REQUEST_BYTES:
                break
        else:  # read whole: one PUT, which lands whole or not at all
            check_sent()
            self.fs.pipe_file(target, b"".join(head))
            return
        # fsspec's ``open`` would register an uncommitted file with the (shared) filesystem's
        # transaction; ``_open`` gives the file alone, to commit or discard here.
        out = self.fs._open(target, "wb", autocommit=False)
        try:
            for chunk in head:
                out.write(chunk)
            head.clear()
            for chunk in chunks:
                out.write(chunk)
            check_sent()
            out.close()  # sends the last part; without autocommit the upload is not completed yet
            out.commit()  # completes the multipart upload: the object appears whole
        except BaseException:  # a failure or a cancellation (Prefect raises BaseException subclasses)
            _discard(out, target)
            raise

    def download_file(self, key: str, local_path: str | Path) -> Path:
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = local_path.with_name(f".{local_path.name}{PARTIAL_MARK}{uuid.uuid4().hex}")
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
            if PARTIAL_MARK in posixpath.basename(path):
                continue
            found.append(posixpath.relpath(_strip_protocol(path), _strip_protocol(base)))
        return sorted(found)

    def children(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (one level), sorted."""
        root = self.path(prefix)
        if not self.fs.exists(root):
            return []
        names = (posixpath.basename(p.rstrip("/")) for p in self.fs.ls(root, detail=False))
        return sorted(name for name in names if PARTIAL_MARK not in name)

    def upload_tree(self, local_dir: str | Path, prefix: str) -> str:
        """Upload every file under ``local_dir`` to ``prefix``; returns the prefix URI.

        Each file lands whole or not at all; if the upload breaks, the files before it are stored
        and the rest are not, so the tree is complete only once its marker or record is written.
        """
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


def _write_local(target: str, chunks: Iterator[bytes], check_sent: Callable[[], None]) -> None:
    # The temporary file sits in the target's directory, so the rename stays on one filesystem
    # and is atomic; it is removed whatever happens, so a failure leaves only the old file.
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temporary = f"{target}{PARTIAL_MARK}{uuid.uuid4().hex}"
    try:
        with open(temporary, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        check_sent()
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _discard(out, target: str) -> None:
    """Abandon an uncommitted remote write (aborts its multipart upload); never masks the failure."""
    try:
        out.discard()
    except Exception:  # the write's own failure is the one to report
        logger.warning("could not abort the unfinished upload to %s; the store may keep its parts", target, exc_info=True)
    finally:
        out.closed = True  # so that garbage collection does not close (and upload) it


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
