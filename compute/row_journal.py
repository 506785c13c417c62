"""Finished rows that outlive the pod: a row-streaming stage's output, kept in the store in chunks.

Batch inference, log-probabilities and the MMLU-Pro and multiple-choice evals each turn an input
into output rows one batch at a time, in input order. A :class:`RowJournal` keeps the rows a stage
has finished in the artifact store while it runs, so the same stage started again under the same
job ID (Prefect's recovery after a lost pod, or a resubmission) skips them instead of computing
them again, and writes an output file identical to an uninterrupted run's.

Layout under the job's prefix (:func:`journal_prefix` owns it)::

    partial/<stream>/chunk-<first row, 12 digits>.jsonl

``<stream>`` names one output of the job (``outputs``, ``logprobs``, ``mmlu-pro/model-0``, …).
A chunk's first line is its header, ``{"row_journal": 1, "fingerprint": …, "first_row": …,
"rows": …, "counts": {…}}``; its rows follow, one per line, exactly as the stage writes them to
its output file. A chunk is one ``put`` of the store, so it is stored whole or not at all.

When the journal is opened, the stored chunks are read in order and kept while each one carries
the journal's fingerprint (a hash of the input and of the settings that made the rows), starts at
the row where the previous one ended and holds as many rows as its header says. The first chunk
that does not, and every chunk after it, is deleted: its rows are computed again. So rows made
from another input, with other settings, or by other code that wrote this layout, are never
reused.

A chunk is written once ``chunk_rows`` rows, or ``chunk_seconds`` seconds' worth of rows, have
accumulated since the last one; the stage hands rows over a finished batch at a time, so a lost pod
loses at most one chunk's rows and the batch in flight.

The chunks matter only until the job's result record exists: a stage lists
:func:`journal_root` in ``StageResult.disposable_prefixes``, and the GPU stage deletes it after
writing ``result.json`` (as it does a training job's checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.artifact_store import ArtifactStore
from store.layout import journal_root

if TYPE_CHECKING:
    from pydantic import BaseModel

    from compute.stage import StageContext

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# How often finished rows are stored: a chunk per this many rows or this many seconds, whichever
# comes first. A chunk is one object; at these values a day-long job writes a few thousand.
DEFAULT_CHUNK_ROWS = 512
DEFAULT_CHUNK_SECONDS = 60.0
_CHUNK_NAME = re.compile(r"^chunk-(\d{12})\.jsonl$")


def journal_prefix(job_prefix: str, stream: str) -> str:
    """The store prefix of one output stream's chunks."""
    return f"{journal_root(job_prefix)}/{stream.strip('/')}"


def chunk_key(prefix: str, first_row: int) -> str:
    """The key of the chunk whose first row is ``first_row`` (names sort in row order)."""
    return f"{prefix}/chunk-{first_row:012d}.jsonl"


def row_fingerprint(*parts: Any, files: Sequence[str | Path] = ()) -> str:
    """A SHA-256 of ``parts`` (as canonical JSON) and of the bytes of ``files``: what decides a stream's rows."""
    file_digests = []
    for path in files:
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                file_digest.update(block)
        file_digests.append(file_digest.hexdigest())
    canonical = json.dumps([parts, file_digests], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class RowJournal:
    """The finished rows of one output stream of a job, stored in chunks as the stage produces them.

    Open it before computing (the constructor reads what an earlier attempt stored), write
    :meth:`resumed_lines` to the output first, compute the rows from :attr:`resumed_rows` on,
    hand each finished batch to :meth:`record`, and :meth:`flush` at the end.
    """

    def __init__(
        self,
        store: ArtifactStore,
        prefix: str,
        fingerprint: str,
        *,
        total_rows: int | None = None,
        chunk_rows: int | None = None,
        chunk_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.prefix = prefix.strip("/")
        self.fingerprint = fingerprint
        self.chunk_rows = DEFAULT_CHUNK_ROWS if chunk_rows is None else chunk_rows
        self.chunk_seconds = DEFAULT_CHUNK_SECONDS if chunk_seconds is None else chunk_seconds
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {self.chunk_rows}")
        self._clock = clock
        self._chunks, self.resumed_counts = self._read_stored_chunks(total_rows)
        self.resumed_rows = sum(rows for _, rows in self._chunks)
        self.stored_rows = self.resumed_rows  # rows in the store: resumed, then flushed by this run
        self._pending: list[str] = []
        self._pending_counts: dict[str, float] = {}
        self._last_flush = clock()

    @property
    def rows(self) -> int:
        """Rows finished so far: resumed, then recorded by this run."""
        return self.stored_rows + len(self._pending)

    def resumed_lines(self) -> Iterator[str]:
        """The rows an earlier attempt stored, in order, each as the line (without its newline) it wrote."""
        for key, _ in self._chunks:
            lines = self.store.walk_lines(key)
            next(lines)  # the header
            for raw in lines:
                yield raw.decode("utf-8").rstrip("\n")

    def record(self, lines: Sequence[str], counts: Mapping[str, float] | None = None) -> None:
        """Add the next finished rows (output lines without newlines), with any tallies to keep with them.

        ``counts`` (e.g. tokens generated) are summed per chunk and come back as
        :attr:`resumed_counts`, for what cannot be read back from the rows themselves.
        """
        self._pending.extend(lines)
        for name, value in (counts or {}).items():
            self._pending_counts[name] = self._pending_counts.get(name, 0) + value
        if len(self._pending) >= self.chunk_rows or self._clock() - self._last_flush >= self.chunk_seconds:
            self.flush()

    def flush(self) -> None:
        """Store the rows recorded since the last chunk as one chunk (nothing when there are none)."""
        self._last_flush = self._clock()
        if not self._pending:
            return
        header = {
            "row_journal": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "first_row": self.stored_rows,
            "rows": len(self._pending),
            "counts": self._pending_counts,
        }
        body = "\n".join([json.dumps(header, sort_keys=True), *self._pending]) + "\n"
        self.store.write_bytes(chunk_key(self.prefix, self.stored_rows), body.encode("utf-8"))
        self.stored_rows += len(self._pending)
        self._pending, self._pending_counts = [], {}

    def discard(self) -> None:
        """Forget every stored row (a stage found them unusable after all): the run starts from row 0."""
        self.store.delete(self.prefix)
        self._chunks, self.resumed_counts = [], {}
        self.resumed_rows = self.stored_rows = 0
        self._pending, self._pending_counts = [], {}

    def _read_stored_chunks(self, total_rows: int | None) -> tuple[list[tuple[str, int]], dict[str, float]]:
        """The usable chunks ``(key, rows)`` in order and their summed counts; the rest is deleted."""
        kept: list[tuple[str, int]] = []
        counts: dict[str, float] = {}
        next_row = 0
        keys = self.store.list(self.prefix)
        for index, key in enumerate(keys):
            header = self._usable_header(key, next_row, total_rows)
            if header is None:
                for stale in keys[index:]:
                    self.store.delete(stale)
                break
            kept.append((key, header["rows"]))
            next_row += header["rows"]
            for name, value in header["counts"].items():
                counts[name] = counts.get(name, 0) + value
        if kept:
            logger.info(
                "row journal %s: %d rows in %d chunks stored by an earlier attempt",
                self.prefix,
                next_row,
                len(kept),
            )
        return kept, counts

    def _usable_header(self, key: str, first_row: int, total_rows: int | None) -> dict[str, Any] | None:
        """The chunk's header if it continues the stored rows at ``first_row`` for this fingerprint, else None."""
        name = key.rsplit("/", 1)[-1]
        match = _CHUNK_NAME.match(name)
        if match is None or int(match.group(1)) != first_row:
            logger.warning(
                "row journal %s: %s does not continue at row %d; computing from there again",
                self.prefix,
                name,
                first_row,
            )
            return None
        lines = self.store.walk_lines(key)
        try:
            header = json.loads(next(lines))
            rows = sum(1 for _ in lines)
        except (StopIteration, ValueError):
            header, rows = None, -1
        if (
            not isinstance(header, dict)
            or header.get("row_journal") != FORMAT_VERSION
            or header.get("fingerprint") != self.fingerprint
        ):
            logger.warning(
                "row journal %s: %s was written for another input or other settings; computing from row %d again",
                self.prefix,
                name,
                first_row,
            )
            return None
        if (
            header.get("first_row") != first_row
            or header.get("rows") != rows
            or rows < 1
            or not isinstance(header.get("counts"), dict)
        ):
            logger.warning(
                "row journal %s: %s is not whole; computing from row %d again", self.prefix, name, first_row
            )
            return None
        if total_rows is not None and first_row + rows > total_rows:
            logger.warning(
                "row journal %s: %s goes past the input's %d rows; computing from row %d again",
                self.prefix,
                name,
                total_rows,
                first_row,
            )
            return None
        return header


def open_stage_journal(
    context: StageContext,
    stream: str,
    config: BaseModel,
    *,
    files: Sequence[str | Path] = (),
    extra: Sequence[Any] = (),
    total_rows: int | None = None,
) -> RowJournal:
    """The row journal of one output stream of the stage's job; says in the job's log what it resumes.

    Its fingerprint covers the stream, what the job computes (its parameters less the hardware
    request, as its job ID does), ``extra`` values (e.g. the model a stream evaluates) and the
    bytes of the local input ``files``: rows are reused only for the same input and settings.
    """
    from jobs.registry import identity_params

    fingerprint = row_fingerprint(stream, identity_params(config), *extra, files=files)
    journal = RowJournal(
        context.store, journal_prefix(context.job_prefix, stream), fingerprint, total_rows=total_rows
    )
    if journal.resumed_rows:
        context.reporter.log(
            f"resuming {stream}: {journal.resumed_rows} rows were finished by an earlier attempt of this job "
            "and are taken from the store, not computed again"
        )
        context.reporter.event("rows.resumed", {"stream": stream, "rows": journal.resumed_rows})
    return journal
