"""Row validation of JSONL datasets by purpose, streamed line by line.

OpenWeights only tells a user that a file "is not valid". Here every problem is reported as
``<file>, line <n>: <what is wrong>`` (up to :data:`MAX_REPORTED` problems at once), before
the file is stored and long before any GPU is spent.

Purposes and the row shapes they accept:

- ``conversations``: ``{"messages": [...]}`` (roles system/user/assistant; content a string or
  a list of ``{"type": "text", "text": ...}`` parts), ``{"text": "..."}`` for base models, or a
  preference row (as OpenWeights accepts);
- ``preference``: ``{"prompt": [...], "chosen": [...], "rejected": [...]}``, each a message list
  (``preferences``, the spelling of OpenWeights' cookbook, is accepted as its alias: see :func:`canonical_purpose`).
- ``weighted_conversations``: chat rows whose messages or content blocks carry a loss
  ``weight`` (OpenWeights' ``weighted_sft`` format; see :func:`weighted_blocks`).

Other purposes may register a row validator with :func:`register_row_validator`. Purposes in
:data:`TEXT_PURPOSES` (source code, such as inspect-ai task files) are text: UTF-8 without NUL
bytes. Other purposes with no validator are stored as they are, line by line UTF-8.

Every row is at most :data:`MAX_NESTING` levels deep, and a number JSON cannot hand to Python
(an integer of thousands of digits) is a problem of its line, not a crash of the upload.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

MAX_REPORTED = 10
ROLES = ("system", "user", "assistant")
# Purposes whose files are text (code): a NUL byte or undecodable bytes are refused with their line.
TEXT_PURPOSES = ("inspect_task",)
# Other spellings of a purpose → the purpose (OpenWeights validates "preference" but its cookbook uploads
# with "preferences"); a file ID always carries the canonical name, so both spellings are one file.
PURPOSE_ALIASES = {"preferences": "preference"}
NUL = "\x00"
# Deeper than any row format needs; keeps every reader of a row (validators, tokenizer templates,
# the job ID's canonical JSON) clear of Python's recursion limit.
MAX_NESTING = 64
TOO_DEEP = f"the row is nested more than {MAX_NESTING} levels deep"
MAX_INTEGER = 2**63 - 1  # parameters: 64-bit signed integers, what every consumer (torch, vLLM, JSON peers) takes


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
_LAZY_VALIDATORS = {
    "mmlu_pro": "compute.evals.mmlu_pro.dataset:check_mmlu_pro_row",
    "multiple_choice": "jobs.multiple_choice:check_question_row",  # eval/multiple-choice questions
}


def register_row_validator(purpose: str, validator: RowValidator) -> None:
    """Make ``validator`` check every row of files uploaded with ``purpose``."""
    _ROW_VALIDATORS[purpose] = validator


def canonical_purpose(purpose: str) -> str:
    """The purpose ``purpose`` names (an alias such as ``preferences`` → ``preference``)."""
    return PURPOSE_ALIASES.get(purpose, purpose)


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
    text_purpose = purpose in TEXT_PURPOSES
    problems: list[tuple[int | None, str]] = []
    more = 0
    rows = 0
    for number, raw in enumerate(lines, start=1):
        problem = _check_line(raw, validator, text_purpose)
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


def _check_line(raw: bytes, validator: RowValidator | None, text_purpose: bool = False) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if text_purpose and NUL in text:
        return f"contains a NUL byte (column {text.index(NUL) + 1}); this purpose takes text files only"
    if not text.strip():
        return "blank"
    if validator is None:
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:
        return TOO_DEEP
    except ValueError:  # int(): Python's limit on digits of an integer read from text
        return "a number has more digits than Python reads from text (4300); write it as a string"
    # Nesting deeper than MAX_NESTING needs that many brackets; counting them (in C) spares the walk
    # for the rows of an ordinary file, which have a handful.
    if text.count("[") + text.count("{") > MAX_NESTING:
        problem = json_value_problem(row)
        if problem:
            return problem
    try:
        validator(row)
    except RowError as exc:
        return str(exc)
    return None


def json_value_problem(value: Any, where: str = "", integers: bool = False, finite: bool = False) -> str | None:
    """What makes a parsed JSON value unsafe to pass on, or None: nesting beyond :data:`MAX_NESTING`;
    with ``integers``, integers beyond 64 bits; with ``finite``, NaN/Infinity (which JSON cannot hold).

    Iterative, so a hostile value cannot exhaust the stack of the check itself (a cyclic value is
    reported as too deep). ``where`` names the value (a parameter) in the message.
    """
    # The path to each item is kept as a (parent, key) chain and spelt out only for a problem: building
    # a string per element doubled the time to validate a large file.
    stack: list[tuple[Any, int, tuple | None]] = [(value, 1, None)]
    while stack:
        item, depth, chain = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth > MAX_NESTING:
                return f"{where}: nested more than {MAX_NESTING} levels deep" if where else TOO_DEEP
            children = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((child, depth + 1, (chain, key)) for key, child in children)
        elif integers and isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INTEGER:
            return f"{_spelt_path(where, chain) or 'value'}: integer of {item.bit_length()} bits is out of range (at most 64-bit integers)"
        elif finite and isinstance(item, float) and not math.isfinite(item):
            return f"{_spelt_path(where, chain) or 'value'}: {item} is not a finite number"
    return None


def _spelt_path(where: str, chain: tuple | None) -> str:
    """``where`` followed by the keys of ``chain`` (``meta.a[0]``), at most 160 characters."""
    keys = []
    while chain is not None:
        chain, key = chain
        keys.append(key)
    steps = "".join(f"[{key}]" if isinstance(key, int) else f".{str(key)[:40]}" for key in reversed(keys))
    return (where + steps)[:160]


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


# -- weighted conversations: OpenWeights' weighted_sft format ----------------------------------
# A chat row whose messages, or the text blocks of a message's content, carry a loss "weight"
# (negative allowed: the tokens' likelihood is pushed down). Other keys of a block ("tag", …)
# are kept and ignored, as OpenWeights does.

WEIGHTED_CONVERSATIONS = "weighted_conversations"
FLOAT32_MAX = 3.4028234663852886e38  # weights become float32 tensors; anything larger is infinite there


def _weight_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a loss weight, or None; ``null`` (or no key) means the default weight."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            if abs(float(value)) <= FLOAT32_MAX:  # False for NaN as well
                return None
        except OverflowError:  # an integer beyond any float
            pass
    return f"must be a finite number (a 32-bit float), got {json.dumps(value)[:40]}"


def weighted_blocks(message: dict, responses_only: bool) -> list[tuple[str, float]]:
    """A message's text blocks with the weight each trains with.

    A block's own ``weight`` wins, then its message's ``weight``, then the default: 1 for an
    assistant turn; for other roles 0 with ``train_on_responses_only``, else 1.
    """
    weight = message.get("weight")
    if weight is None:
        weight = 1.0 if message["role"] == "assistant" or not responses_only else 0.0
    content = message["content"]
    if isinstance(content, str):
        return [(content, float(weight))]
    return [(part["text"], float(weight if part.get("weight") is None else part["weight"])) for part in content]


def check_weighted_conversation_row(row: Any) -> None:
    """A chat row (``messages``) whose messages and content blocks may carry a finite ``weight``."""
    if not isinstance(row, dict):
        raise RowError(f"each line must be a JSON object, got {type(row).__name__}")
    if "messages" not in row:
        raise RowError("a weighted conversations row needs 'messages' (a chat whose messages or blocks carry a 'weight')")
    check_message_list(row["messages"], "messages")
    for index, message in enumerate(row["messages"]):
        problem = _weight_problem(message.get("weight"))
        if problem:
            raise RowError(f"messages[{index}].weight {problem}")
        if isinstance(message["content"], list):
            for block, part in enumerate(message["content"]):
                problem = _weight_problem(part.get("weight"))
                if problem:
                    raise RowError(f"messages[{index}].content[{block}].weight {problem}")


def weighted_training_row_check(responses_only: bool) -> RowValidator:
    """The weighted-SFT job's check of a training row: valid weights, and at least one non-zero.

    Also run on ``conversations`` files (OpenWeights uploads weighted data under that purpose),
    whose own validator ignores weights.
    """

    def check(row: Any) -> None:
        check_weighted_conversation_row(row)
        if not any(weight for message in row["messages"] for _, weight in weighted_blocks(message, responses_only)):
            raise RowError(
                "every block of the row weighs 0 (with train_on_responses_only, a non-assistant block without "
                "a weight weighs 0), so it trains nothing"
            )

    return check


register_row_validator(WEIGHTED_CONVERSATIONS, check_weighted_conversation_row)
