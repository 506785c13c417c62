"""The row journal: finished rows stored in chunks while a stage runs, reused only when they continue the same input."""

from __future__ import annotations

import json

import pytest

from compute.row_journal import RowJournal, chunk_key, journal_prefix, journal_root, row_fingerprint
from store.artifact_store import ArtifactStore

PREFIX = journal_prefix("jobs/infjob-1", "outputs")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


def rows(first: int, count: int) -> list[str]:
    return [json.dumps({"row": index}) for index in range(first, first + count)]


def journal(store: ArtifactStore, fingerprint: str = "input-a", **options) -> RowJournal:
    return RowJournal(store, PREFIX, fingerprint, **options)


def test_the_layout_is_partial_stream_chunk_by_first_row():
    assert journal_root("jobs/infjob-1") == "jobs/infjob-1/partial"
    assert PREFIX == "jobs/infjob-1/partial/outputs"
    assert chunk_key(PREFIX, 1024) == "jobs/infjob-1/partial/outputs/chunk-000000001024.jsonl"


def test_a_chunk_is_stored_every_chunk_rows_rows(store):
    first = journal(store, chunk_rows=3, chunk_seconds=3600)
    first.record(rows(0, 2))
    assert store.list(PREFIX) == []  # not yet due
    first.record(rows(2, 2))
    first.record(rows(4, 1))
    assert store.list(PREFIX) == [chunk_key(PREFIX, 0)]  # rows 0-3; row 4 waits for the next chunk
    assert (first.stored_rows, first.rows) == (4, 5)


def test_a_chunk_is_stored_every_chunk_seconds_however_few_the_rows(store):
    clock = FakeClock()
    first = journal(store, chunk_rows=1000, chunk_seconds=60, clock=clock)
    first.record(rows(0, 1))
    clock.now = 59
    first.record(rows(1, 1))
    assert store.list(PREFIX) == []
    clock.now = 60
    first.record(rows(2, 1))
    assert store.list(PREFIX) == [chunk_key(PREFIX, 0)]
    clock.now = 100  # 40 s after the last chunk: not due
    first.record(rows(3, 1))
    assert store.list(PREFIX) == [chunk_key(PREFIX, 0)]


def test_a_new_journal_resumes_the_stored_rows_and_counts_in_order(store):
    first = journal(store, chunk_rows=2)
    first.record(rows(0, 2), {"generated_tokens": 10})
    first.record(rows(2, 3), {"generated_tokens": 7})
    first.record(rows(5, 1), {"generated_tokens": 1})  # pending when the pod is lost: not stored

    again = journal(store, chunk_rows=2)
    assert again.resumed_rows == 5
    assert list(again.resumed_lines()) == rows(0, 5)
    assert again.resumed_counts == {"generated_tokens": 17}
    again.record(rows(5, 2))
    assert store.list(PREFIX) == [chunk_key(PREFIX, 0), chunk_key(PREFIX, 2), chunk_key(PREFIX, 5)]
    assert list(journal(store).resumed_lines()) == rows(0, 7)


def test_rows_stored_for_another_input_are_deleted_not_reused(store):
    first = journal(store, "input-a", chunk_rows=1)
    first.record(rows(0, 3))
    other = journal(store, "input-b", chunk_rows=1)
    assert other.resumed_rows == 0
    assert store.list(PREFIX) == []
    other.record(rows(0, 1))
    assert journal(store, "input-a").resumed_rows == 0  # nor the other way round


def test_only_the_contiguous_prefix_of_chunks_is_kept(store):
    first = journal(store, chunk_rows=2)
    for start in (0, 2, 4, 6):
        first.record(rows(start, 2))
    store.delete(chunk_key(PREFIX, 2))  # a gap: rows 2-3 are missing
    again = journal(store, chunk_rows=2)
    assert again.resumed_rows == 2
    assert store.list(PREFIX) == [chunk_key(PREFIX, 0)]  # what followed the gap is computed again
    again.record(rows(2, 2))
    assert again.stored_rows == 4 and list(journal(store).resumed_lines()) == rows(0, 4)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda header, body: [json.dumps({**header, "rows": 5}), *body],
            id="fewer rows than its header says",
        ),
        pytest.param(
            lambda header, body: [json.dumps({**header, "first_row": 9}), *body],
            id="a header of another place",
        ),
        pytest.param(lambda header, body: ["not json", *body], id="no header"),
        pytest.param(
            lambda header, body: [json.dumps({**header, "row_journal": 99}), *body], id="another format"
        ),
    ],
)
def test_a_damaged_chunk_and_all_after_it_are_dropped(store, damage):
    first = journal(store, chunk_rows=2)
    for start in (0, 2, 4):
        first.record(rows(start, 2))
    key = chunk_key(PREFIX, 2)
    header, *body = store.read_bytes(key).decode().splitlines()
    store.write_bytes(key, ("\n".join(damage(json.loads(header), body)) + "\n").encode())
    again = journal(store)
    assert again.resumed_rows == 2
    assert store.list(PREFIX) == [chunk_key(PREFIX, 0)]


def test_rows_past_the_end_of_the_input_are_not_resumed(store):
    first = journal(store, chunk_rows=2)
    first.record(rows(0, 2))
    first.record(rows(2, 2))
    assert journal(store, total_rows=3).resumed_rows == 2


def test_discard_forgets_every_stored_row(store):
    first = journal(store, chunk_rows=1)
    first.record(rows(0, 2))
    again = journal(store)
    again.discard()
    assert (again.resumed_rows, again.stored_rows, list(again.resumed_lines())) == (0, 0, [])
    assert store.list(PREFIX) == []


def test_the_fingerprint_covers_the_values_and_the_file_bytes(tmp_path):
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text('{"text": "one"}\n')
    b.write_text('{"text": "two"}\n')
    assert row_fingerprint("outputs", {"max_tokens": 5}, files=[a]) == row_fingerprint(
        "outputs", {"max_tokens": 5}, files=[a]
    )
    assert row_fingerprint("outputs", {"max_tokens": 5}, files=[a]) != row_fingerprint(
        "outputs", {"max_tokens": 5}, files=[b]
    )
    assert row_fingerprint("outputs", {"max_tokens": 5}, files=[a]) != row_fingerprint(
        "outputs", {"max_tokens": 6}, files=[a]
    )
    assert row_fingerprint("outputs", files=[a]) != row_fingerprint("logprobs", files=[a])
