"""Every store write lands whole at its key or not at all, on S3 (moto, loopback) and on a local disk.

A record in the store (a job's outputs, a file's record) must always describe complete bytes, so a
write that breaks midway (a source that fails, a run cancelled mid-upload) may leave the old object
or nothing at its key — never the part that was sent, and no temporary object or multipart upload.
"""

import hashlib
import os
import signal
import threading
import time

import pytest

from blocks.storage import ArtifactStoreBlock
from store.artifact_store import ArtifactStore, ContentMismatchError

MiB = 1 << 20


class SourceFailed(OSError):
    """What a source raises when it breaks: a dropped connection, a dying disk."""


class FailsAfter:
    """A readable binary stream that yields ``limit`` bytes and then raises :class:`SourceFailed`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.sent = 0

    def read(self, size: int = -1) -> bytes:
        if self.sent >= self.limit:
            raise SourceFailed(f"source failed after {self.sent} bytes")
        count = self.limit - self.sent if size is None or size < 0 else min(size, self.limit - self.sent)
        self.sent += count
        return b"x" * count


class Cancelled(BaseException):
    """Raised in the main thread by a signal, as Prefect's TerminationSignal is when a run is cancelled."""


def s3_store(s3_server, prefix: str, **options) -> ArtifactStore:
    block = ArtifactStoreBlock(
        base_url=f"s3://{s3_server.bucket}/{prefix}",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name="us-east-1",
    )
    return ArtifactStore(block.base_url, {**block.storage_options(), **options})


def multipart_uploads_in_progress(s3_server, prefix: str) -> list[str]:
    listing = s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket, Prefix=prefix)
    return [upload["Key"] for upload in listing.get("Uploads", [])]


@pytest.mark.parametrize(
    ("case", "fail_after", "options"),
    [
        ("one-request", 3 * MiB, {}),
        # Small parts, so several parts of a multipart upload are sent before the source breaks.
        ("multipart", 17 * MiB, {"default_block_size": 5 * MiB}),
    ],
)
def test_a_write_whose_source_fails_midway_leaves_the_old_object_on_s3(s3_server, case, fail_after, options):
    prefix = f"atomic-{case}"
    store = s3_store(s3_server, prefix, **options)
    store.write_bytes("jobs/x/result.bin", b"the previous, complete result")

    with pytest.raises(SourceFailed):
        store.upload_stream("jobs/x/result.bin", FailsAfter(fail_after))
    with pytest.raises(SourceFailed):
        store.upload_stream("jobs/x/new.bin", FailsAfter(fail_after))

    assert store.read_bytes("jobs/x/result.bin") == b"the previous, complete result"
    assert s3_server.keys(f"{prefix}/") == [f"{prefix}/jobs/x/result.bin"]  # no new.bin, no temporary key
    assert multipart_uploads_in_progress(s3_server, f"{prefix}/") == []


def test_upload_tree_cancelled_midway_leaves_each_key_old_or_whole_on_s3(s3_server, tmp_path):
    prefix = "atomic-tree"
    store = s3_store(s3_server, prefix, default_block_size=5 * MiB)
    tree = tmp_path / "adapter"
    tree.mkdir()
    (tree / "a.bin").write_bytes(os.urandom(MiB))
    (tree / "b.bin").write_bytes(os.urandom(48 * MiB))
    (tree / "c.bin").write_bytes(b"config")
    store.write_bytes("adapter/b.bin", b"the previous weights")
    client = s3_server.client()
    upload_returned = threading.Event()

    def cancel_once_b_is_partly_sent():
        # A real interruption at a real point: after the first part of b.bin reached the server.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not upload_returned.is_set():
            for upload in client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=f"{prefix}/adapter/b.bin").get("Uploads", []):
                parts = client.list_parts(Bucket=s3_server.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                if parts.get("Parts"):
                    os.kill(os.getpid(), signal.SIGUSR1)
                    return
            time.sleep(0.005)

    def raise_cancelled(signum, frame):
        raise Cancelled("run cancelled")

    previous = signal.signal(signal.SIGUSR1, raise_cancelled)
    watcher = threading.Thread(target=cancel_once_b_is_partly_sent, daemon=True)
    try:
        watcher.start()
        with pytest.raises(Cancelled):
            store.upload_tree(tree, "adapter")
    finally:
        upload_returned.set()
        watcher.join(timeout=60)
        signal.signal(signal.SIGUSR1, previous)

    assert store.read_bytes("adapter/a.bin") == (tree / "a.bin").read_bytes()  # whole
    assert store.read_bytes("adapter/b.bin") == b"the previous weights"  # old, not half of the new
    assert s3_server.keys(f"{prefix}/") == [f"{prefix}/adapter/a.bin", f"{prefix}/adapter/b.bin"]
    assert multipart_uploads_in_progress(s3_server, f"{prefix}/") == []


def test_a_write_whose_source_fails_midway_leaves_the_old_file_on_disk(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    store.write_bytes("jobs/x/result.bin", b"the previous, complete result")

    with pytest.raises(SourceFailed):
        store.upload_stream("jobs/x/result.bin", FailsAfter(3 * MiB))
    with pytest.raises(SourceFailed):
        store.upload_stream("jobs/x/new.bin", FailsAfter(3 * MiB))

    assert store.read_bytes("jobs/x/result.bin") == b"the previous, complete result"
    assert sorted(os.listdir(tmp_path / "store" / "jobs" / "x")) == ["result.bin"]  # no temporary file left


@pytest.mark.parametrize("where", ["local", "s3"])
def test_bytes_that_do_not_hash_as_expected_are_refused_and_nothing_lands(s3_server, tmp_path, where):
    store = ArtifactStore(tmp_path / "store") if where == "local" else s3_store(s3_server, "atomic-mismatch")
    store.write_bytes("files/x/content", b"intact")
    expected = hashlib.sha256(b"the bytes that were checked").hexdigest()

    with pytest.raises(ContentMismatchError, match=r"files/x/content.*expected sha256 " + expected):
        store.write_bytes("files/x/content", b"other bytes", expected_sha256=expected)
    with pytest.raises(ContentMismatchError):
        store.write_bytes("files/y/content", b"other bytes", expected_sha256=expected)

    assert store.read_bytes("files/x/content") == b"intact"
    assert store.list("files") == ["files/x/content"]
    store.write_bytes("files/y/content", b"the bytes that were checked", expected_sha256=expected)
    assert store.read_bytes("files/y/content") == b"the bytes that were checked"
