"""Content-addressed files: same bytes → same ID, stored once, hashed in constant memory."""

import hashlib
import io
import json
import tracemalloc
from pathlib import Path

import pytest

from jobs.datasets import DatasetError
from store.artifact_store import ArtifactStore
from store.files import (
    FileChangedError,
    UnknownFileError,
    check_file,
    get_file_record,
    parse_file_id,
    read_file_bytes,
    store_checked_file,
    upload_file,
)


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "store")


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROW = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def test_file_id_is_purpose_and_full_sha256(tmp_path, store):
    path = write_rows(tmp_path / "a.jsonl", [ROW])
    record = upload_file(store, path, "conversations")
    assert record.id == f"conversations:file-{hashlib.sha256(path.read_bytes()).hexdigest()}"
    assert parse_file_id(record.id) == ("conversations", record.sha256)
    assert read_file_bytes(store, record.id) == path.read_bytes()


def test_same_bytes_give_the_same_id_and_are_stored_once(tmp_path, store):
    first = write_rows(tmp_path / "first.jsonl", [ROW, ROW])
    second = write_rows(tmp_path / "second-name.jsonl", [ROW, ROW])
    a = upload_file(store, first, "conversations")
    content_key = f"files/{a.sha256}/content"
    stored_at = (tmp_path / "store" / content_key).stat().st_mtime_ns
    b = upload_file(store, second, "conversations")
    assert a.id == b.id
    assert [k for k in store.list("files") if k.endswith("/content")] == [content_key]
    assert (tmp_path / "store" / content_key).stat().st_mtime_ns == stored_at  # not rewritten
    assert b.filename == "first.jsonl"  # the existing record is returned


def test_one_byte_more_is_another_file(tmp_path, store):
    a = upload_file(store, write_rows(tmp_path / "a.jsonl", [ROW]), "conversations")
    path = tmp_path / "b.jsonl"
    path.write_bytes((tmp_path / "a.jsonl").read_bytes() + b"\n")
    assert upload_file(store, path, "conversations").id != a.id


def test_refused_file_stores_nothing(tmp_path, store):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + '{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl, line 2: messages\[0\].role"):
        upload_file(store, path, "conversations")
    assert store.list("files") == []


def test_hashing_and_validation_stream_in_constant_memory(tmp_path, store):
    path = tmp_path / "big.jsonl"
    line = (json.dumps(ROW) + "\n").encode()
    with path.open("wb") as handle:
        for _ in range(400_000):  # ~30 MB
            handle.write(line)
    tracemalloc.start()
    record = upload_file(store, path, "conversations")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert record.rows == 400_000
    assert record.bytes == path.stat().st_size
    assert peak < 8 * 1024 * 1024, f"peak Python allocation {peak / 1e6:.1f} MB for a {record.bytes / 1e6:.0f} MB file"


def test_unknown_and_mistyped_file_ids(tmp_path, store):
    record = upload_file(store, write_rows(tmp_path / "a.jsonl", [ROW]), "conversations")
    with pytest.raises(UnknownFileError, match="unknown file ID"):
        get_file_record(store, "conversations:file-" + "0" * 64)
    with pytest.raises(UnknownFileError, match="uploaded with purpose conversations, not 'preference'"):
        get_file_record(store, f"preference:file-{record.sha256}")
    with pytest.raises(ValueError, match="is not a file ID"):
        get_file_record(store, "file-abc")


def test_bad_purpose_name_is_refused(tmp_path, store):
    with pytest.raises(ValueError, match="purpose must match"):
        upload_file(store, write_rows(tmp_path / "a.jsonl", [ROW]), "Conversations!")


OTHER_ROW = {"messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]}


class RewrittenOnRewind(io.FileIO):
    """A real file that another writer replaces after it was read once, when the upload rewinds it."""

    def __init__(self, path, replacement: bytes):
        super().__init__(path, "rb")
        self._replacement = replacement

    def seek(self, offset, whence=io.SEEK_SET):
        if self._replacement is not None and (offset, whence) == (0, io.SEEK_SET) and self.tell() > 0:
            Path(self.name).write_bytes(self._replacement)
            self._replacement = None
        return super().seek(offset, whence)


def test_a_file_changed_between_check_and_upload_is_refused_and_stores_nothing(tmp_path, store):
    path = write_rows(tmp_path / "a.jsonl", [ROW])
    record = check_file(path, "conversations")  # what `ow files upload` hashes and validates
    write_rows(path, [OTHER_ROW])  # the file changes before its bytes are sent
    with pytest.raises(FileChangedError, match=rf"a.jsonl changed while it was being uploaded.*{record.sha256}"):
        store_checked_file(store, record, path)
    assert store.list("files") == []
    assert not list((tmp_path / "store").rglob("*.partial-*"))


def test_an_open_file_changed_between_its_two_reads_is_refused_and_stores_nothing(tmp_path, store):
    path = write_rows(tmp_path / "a.jsonl", [ROW])
    with RewrittenOnRewind(path, (json.dumps(OTHER_ROW) + "\n").encode()) as handle:
        with pytest.raises(FileChangedError, match="a.jsonl changed while it was being uploaded"):
            upload_file(store, handle, "conversations")
    assert store.list("files") == []


def test_stored_content_that_does_not_match_its_digest_is_rewritten(tmp_path, store):
    path = write_rows(tmp_path / "a.jsonl", [ROW])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    store.write_bytes(f"files/{digest}/content", path.read_bytes().replace(b"2+2", b"2+3"))  # same size, other bytes
    record = upload_file(store, path, "conversations")
    assert read_file_bytes(store, record.id) == path.read_bytes()


def test_truncated_content_under_an_existing_record_is_rewritten(tmp_path, store):
    path = write_rows(tmp_path / "a.jsonl", [ROW, ROW])
    record = upload_file(store, path, "conversations")
    store.write_bytes(f"files/{record.sha256}/content", path.read_bytes()[:10])  # left by an older, non-atomic write
    again = upload_file(store, path, "conversations")
    assert again == record
    assert read_file_bytes(store, record.id) == path.read_bytes()
