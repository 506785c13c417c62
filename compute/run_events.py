"""Events a job's own code logs for its run (OpenWeights' ``ow.run.log``), and how its stage passes them on.

A job's code may hold no credential (a custom job's script gets no Prefect settings), so it never
talks to the Prefect API itself. It appends each event as one JSON line to the file named by
:data:`RUN_EVENTS_ENV`; the stage that started it reads the file as it grows
(:class:`RunEventForwarder`) and reports the events through its :class:`~compute.reporting.Reporter`
as the table :data:`EVENTS_TABLE` — in the GPU stage a Prefect table artifact of the stage's flow
run, which ``ow.events`` reads back.

A line is ``{"created_at": "<ISO 8601, UTC>", "data": {...}}``, written with one ``write`` to a
file opened for appending, so lines from several processes of one job (data-parallel ranks) do not
interleave.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from compute.reporting import Reporter

RUN_EVENTS_ENV = "OW_RUN_EVENTS"
EVENTS_TABLE = "events"
# Every report is the whole table (a new version of the artifact): the wait between two reports
# grows with the table, so all versions together stay a small multiple of the last one.
FIRST_REPORT_SECONDS = 5.0
SECONDS_PER_EVENT = 0.05
# poll() is called for every line a script prints; the file is looked at no more often than this.
POLL_SECONDS = 0.5


def encode_run_event(data: Mapping[str, Any], created_at: datetime | None = None) -> bytes:
    """One event as a JSON line (``created_at`` defaults to now). Pure.

    Values must be JSON: numbers, strings, booleans, None, lists and dicts of them; numpy and torch
    scalars and arrays are converted with their ``tolist()``. A ``TypeError`` names the key that is not.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"ow.run.log takes a dict of JSON values, got {type(data).__name__}")
    for key, value in data.items():
        if not isinstance(key, str):
            raise TypeError(f"ow.run.log: key {key!r} is a {type(key).__name__}; keys must be strings")
        try:
            json.dumps(value, default=_plain)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"ow.run.log: {key!r} is a {type(value).__name__}, not a JSON value "
                f"(numbers, strings, booleans, None, lists and dicts of them): {exc}"
            ) from None
    when = (created_at or datetime.now(UTC)).astimezone(UTC)
    line = json.dumps({"created_at": when.isoformat(), "data": dict(data)}, default=_plain)
    return (line + "\n").encode("utf-8")


def _plain(value: Any) -> Any:
    """numpy/torch scalars and arrays as Python numbers and lists; anything else is refused."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def append_run_event(path: str | Path, data: Mapping[str, Any]) -> None:
    """Append one event to the run's events file (one ``write``, so concurrent writers do not interleave)."""
    line = encode_run_event(data)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def decode_run_event(line: bytes) -> dict[str, Any] | None:
    """The event a line holds (``created_at``, ``data``), or None if it is not one. Pure."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not (
        isinstance(event, dict)
        and isinstance(event.get("data"), dict)
        and isinstance(event.get("created_at"), str)
    ):
        return None
    return {"created_at": event["created_at"], "data": event["data"]}


def report_interval(events: int, minimum: float = FIRST_REPORT_SECONDS) -> float:
    """Seconds to wait before reporting a table of ``events`` rows again. Pure."""
    return max(minimum, events * SECONDS_PER_EVENT)


class RunEventForwarder:
    """Reads the events a job's code appends to ``path`` and reports them as the run's events table.

    :meth:`poll` is cheap and may be called often (the custom stage calls it for every line the script
    prints); the first events are reported at once, later ones at most every :func:`report_interval`.
    :meth:`close` reads and reports what is left, whether the code succeeded or not.
    """

    def __init__(
        self,
        path: Path,
        reporter: Reporter,
        min_interval: float = FIRST_REPORT_SECONDS,
        poll_seconds: float = POLL_SECONDS,
    ):
        self.path = Path(path)
        self.events: list[dict[str, Any]] = []
        self._reporter = reporter
        self._min_interval = min_interval
        self._poll_seconds = poll_seconds
        self._offset = 0
        self._partial = b""
        self._lines = 0
        self._reported = 0
        self._last_report = -math.inf
        self._last_poll = -math.inf

    def poll(self) -> None:
        now = time.monotonic()
        if now - self._last_poll < self._poll_seconds:
            return
        self._last_poll = now
        self._read(final=False)
        if len(self.events) > self._reported and now - self._last_report >= report_interval(
            self._reported, self._min_interval
        ):
            self._report()

    def close(self) -> list[dict[str, Any]]:
        """Report every event not reported yet; returns all the run's events."""
        self._read(final=True)
        if len(self.events) > self._reported:
            self._report()
        return self.events

    def _read(self, final: bool) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size > self._offset:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read(size - self._offset)
            self._offset += len(chunk)
            self._partial += chunk
        lines = self._partial.split(b"\n")
        self._partial = lines.pop()  # an unfinished line waits for its end, unless the code is done
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            self._lines += 1
            if not line.strip():
                continue
            event = decode_run_event(line)
            if event is None:
                self._reporter.log(
                    f"{self.path.name}, line {self._lines}: not an event written by ow.run.log; skipped"
                )
            else:
                self.events.append(event)

    def _report(self) -> None:
        self._reporter.table(
            EVENTS_TABLE, [dict(event) for event in self.events], description="Events logged with ow.run.log"
        )
        self._reported = len(self.events)
        self._last_report = time.monotonic()
