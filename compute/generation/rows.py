"""The rows of an inference input file, read and checked line by line.

A row is a chat, ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``
(content a string or a list of ``{"type": "text", "text": ...}`` parts), or a base-model prompt,
``{"text": "..."}``. Other keys are kept and written back with the completions. A chat whose
last message is from the assistant is continued from that message (OpenWeights' behaviour).

Problems are reported as ``<file>, line <n>: <what is wrong>`` through the project's one dataset
error (:class:`jobs.datasets.DatasetError`); :func:`validate_prompt_file` reports up to ten at
once so a user fixes a file in one round. Everything here is pure and streams: memory does not
grow with the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from compute.training.examples import normalise_messages
from jobs.datasets import MAX_REPORTED, DatasetError, RowError, check_message_list

T = TypeVar("T")


@dataclass(frozen=True)
class PromptRow:
    """One input row: where it came from, the row as read, and its prompt (chat or text)."""

    line: int
    row: dict[str, Any]
    messages: list[dict[str, str]] | None = None  # content flattened to strings
    text: str | None = None


def check_inference_row(row: Any, prefill: str = "") -> None:
    """Raise :class:`RowError` unless ``row`` is a chat or text prompt (and ``prefill`` fits it)."""
    if not isinstance(row, dict):
        raise RowError(f"each line must be a JSON object, got {type(row).__name__}")
    if "messages" in row and "text" in row:
        raise RowError("a row has either 'messages' or 'text', not both")
    if "messages" in row:
        check_message_list(row["messages"], "messages")
        return
    if "text" in row:
        if not isinstance(row["text"], str):
            raise RowError(f"'text' must be a string, got {type(row['text']).__name__}")
        if prefill:
            raise RowError("prefill is set but this is a text row; put the prefill at the end of 'text' instead")
        return
    if {"prompt", "chosen", "rejected"} <= row.keys():
        raise RowError("prompt/chosen/rejected rows are for preference training; inference needs 'messages' or 'text'")
    raise RowError("an inference row needs 'messages' (a chat) or 'text' (a base-model prompt)")


def inference_row_check(prefill: str = "") -> Callable[[Any], None]:
    """The row check of an inference job, for the control tier's file validation (``InputFile.row_check``)."""

    def check(row: Any) -> None:
        check_inference_row(row, prefill)

    return check


def _parse_line(raw: bytes, prefill: str) -> dict[str, Any] | None:
    """The row on this line (None for a blank line); RowError says what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    check_inference_row(row, prefill)
    return row


def validate_prompt_file(path: str | Path, prefill: str = "") -> int:
    """Check every row of ``path``; returns the number of rows. Cheap: no tokenizer, no model.

    Run it before loading a model, so a bad line 90 000 fails the job in seconds, not hours.
    """
    problems: list[tuple[int | None, str]] = []
    more = rows = 0
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                row = _parse_line(raw, prefill)
            except RowError as exc:
                if len(problems) < MAX_REPORTED:
                    problems.append((number, str(exc)))
                else:
                    more += 1
                continue
            if row is not None:
                rows += 1
    if problems:
        raise DatasetError(str(path), problems, more)
    return rows


def read_prompt_rows(path: str | Path, prefill: str = "") -> Iterator[PromptRow]:
    """The rows of ``path`` in order, one line at a time; a bad row raises DatasetError naming its line."""
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                row = _parse_line(raw, prefill)
            except RowError as exc:
                raise DatasetError(str(path), [(number, str(exc))]) from None
            if row is None:
                continue
            if "messages" in row:
                yield PromptRow(number, row, messages=normalise_messages(row["messages"]))
            else:
                yield PromptRow(number, row, text=row["text"])


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), pulled lazily from ``items``."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
