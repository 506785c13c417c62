"""Row validation of JSONL datasets by purpose, streamed line by line.

OpenWeights only tells a user that a file "is not valid". Here every problem is reported as
``<file>, line <n>: <what is wrong>`` (up to :data:`MAX_REPORTED` problems at once), before
the file is stored and long before any GPU is spent.

Purposes and the row shapes they accept:

- ``conversations``: ``{"messages": [...]}`` (roles system/user/assistant; content a string or
  a list of ``{"type": "text", "text": ...}`` parts), ``{"text": "..."}`` for base models, or a
  preference row (as OpenWeights accepts);
- ``preference``: ``{"prompt": [...], "chosen": [...], "rejected": [...]}``, each a message list.

Other purposes may register a row validator with :func:`register_row_validator`; purposes with
none are stored as opaque bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

MAX_REPORTED = 10
ROLES = ("system", "user", "assistant")


class DatasetError(ValueError):
    """A dataset failed validation; ``problems`` holds ``(line, message)`` pairs."""

    def __init__(self, file: str, problems: list[tuple[int | None, str]], more: int = 0):
        self.file = file
        self.problems = problems
        lines = [f"{file}, line {line}: {message}" if line else f"{file}: {message}" for line, message in problems]
        if more:
            lines.append(f"… and {more} more problem(s)")
        super().__init__("\n".join(lines))


class RowError(ValueError):
    """A problem with one row; the validator adds file and line."""


RowValidator = Callable[[Any], None]
_ROW_VALIDATORS: dict[str, RowValidator] = {}
# Validators that live with the code that reads the format; imported on first use.
_LAZY_VALIDATORS = {"mmlu_pro": "compute.evals.mmlu_pro.dataset:check_mmlu_pro_row"}


def register_row_validator(purpose: str, validator: RowValidator) -> None:
    """Make ``validator`` check every row of files uploaded with ``purpose``."""
    _ROW_VALIDATORS[purpose] = validator


def validated_purposes() -> list[str]:
    return sorted(set(_ROW_VALIDATORS) | set(_LAZY_VALIDATORS))


def row_validator(purpose: str) -> RowValidator | None:
    if purpose not in _ROW_VALIDATORS and purpose in _LAZY_VALIDATORS:
        import importlib

        module, _, name = _LAZY_VALIDATORS[purpose].partition(":")
        _ROW_VALIDATORS[purpose] = getattr(importlib.import_module(module), name)
    return _ROW_VALIDATORS.get(purpose)


def validate_lines(lines: Iterable[bytes], purpose: str, file: str, extra_check: RowValidator | None = None) -> int:
    """Validate JSONL ``lines`` for ``purpose``; returns the number of rows.

    ``extra_check`` adds a job-specific rule on top of the purpose's own (a job may need more
    than the upload accepted, e.g. assistant turns for response-only training). Raises
    :class:`DatasetError` naming the file and each bad line.
    """
    validator = _compose(row_validator(purpose), extra_check)
    problems: list[tuple[int | None, str]] = []
    more = 0
    rows = 0
    for number, raw in enumerate(lines, start=1):
        problem = _check_line(raw, validator)
        if problem == "blank":
            continue
        rows += 1
        if problem:
            if len(problems) < MAX_REPORTED:
                problems.append((number, problem))
            else:
                more += 1
    if validator is not None and rows == 0 and not problems:
        problems.append((None, f"the file has no rows; a {purpose} file needs at least one JSON object per line"))
    if problems:
        raise DatasetError(file, problems, more)
    return rows


def _compose(first: RowValidator | None, second: RowValidator | None) -> RowValidator | None:
    if first is None or second is None:
        return first or second

    def both(row: Any) -> None:
        first(row)
        second(row)

    return both


def _check_line(raw: bytes, validator: RowValidator | None) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if not text.strip():
        return "blank"
    if validator is None:
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg} (column {exc.colno})"
    try:
        validator(row)
    except RowError as exc:
        return str(exc)
    return None


# -- the OpenWeights row shapes ---------------------------------------------------------------


def check_message(message: Any, where: str) -> None:
    """A chat message: a role and string content, or content as a list of text parts."""
    if not isinstance(message, dict):
        raise RowError(f"{where} must be an object with 'role' and 'content', got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise RowError(f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})")
    if "content" not in message:
        raise RowError(f"{where} has no 'content'")
    content = message["content"]
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise RowError(f"{where}.content must be a string or a list of text parts, got {type(content).__name__}")
    for index, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise RowError(f"{where}.content[{index}] must be an object with a string 'text'")
        if part.get("type", "text") != "text":
            raise RowError(f"{where}.content[{index}].type must be 'text' (got {part.get('type')!r})")


def check_message_list(messages: Any, field: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise RowError(f"'{field}' must be a non-empty list of messages")
    for index, message in enumerate(messages):
        check_message(message, f"{field}[{index}]")


def check_preference_row(row: Any) -> None:
    if not isinstance(row, dict):
        raise RowError(f"each line must be a JSON object, got {type(row).__name__}")
    missing = [key for key in ("prompt", "chosen", "rejected") if key not in row]
    if missing:
        raise RowError(f"preference rows need 'prompt', 'chosen' and 'rejected'; missing {', '.join(missing)}")
    for key in ("prompt", "chosen", "rejected"):
        check_message_list(row[key], key)


def check_conversation_row(row: Any) -> None:
    if not isinstance(row, dict):
        raise RowError(f"each line must be a JSON object, got {type(row).__name__}")
    if "messages" in row:
        if "text" in row:
            raise RowError("a row has either 'messages' or 'text', not both")
        check_message_list(row["messages"], "messages")
    elif "text" in row:
        if not isinstance(row["text"], str):
            raise RowError(f"'text' must be a string, got {type(row['text']).__name__}")
    elif {"prompt", "chosen", "rejected"} <= row.keys():
        check_preference_row(row)
    else:
        raise RowError("a conversations row needs 'messages' (chat), 'text' (base model) or prompt/chosen/rejected")


register_row_validator("conversations", check_conversation_row)
register_row_validator("preference", check_preference_row)
