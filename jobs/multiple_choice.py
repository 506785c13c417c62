"""Parameters and question rows of ``eval/multiple-choice``: OpenWeights' ``multiple_choice`` job.

Each choice is scored by the log-probability the model gives the answer naming it — no sampling —
so a question's choices get a probability distribution, and the evaluation reports accuracy and
calibration (:mod:`compute.evals.multiple_choice`).

OpenWeights' ``MCQJobModel`` takes ``mc_eval``: questions with choices (``{"text", "is_correct"}``),
``choice_template``, ``question_template``, ``answer_template`` and ``randomize``. Here:

- the questions are a JSONL file uploaded with purpose ``multiple_choice`` and checked line by line
  at upload (:func:`check_question_row`), one question per line::

      {"question": "What is the capital of France?", "choices": ["Paris", "Rome", "Oslo"],
       "answer": "Paris", "category": "geography"}

  ``choices`` may also be OpenWeights' objects, ``[{"text": "Paris", "is_correct": true}, ...]``
  with exactly one correct choice (``answer`` is then optional and must agree). Optional keys:
  ``id`` (default: the line number), ``category`` (default ``"default"``), ``context`` (messages
  shown before the question: a system prompt, worked examples);
- the templates are parameters with OpenWeights' defaults; ``answer_template`` is one string (all
  of it is scored) instead of a list of content blocks;
- ``randomize`` shuffles each question's choices reproducibly (seeded by ``seed`` and the
  question's ``id``): the same job always presents the same order, so its ID names one result;
- the job evaluates ``model`` and its ``lora_adapters`` like the other evaluations, and so can be a
  column of ``eval/sweep`` (kind ``multiple-choice``; the score is the accuracy).

Pure pydantic (no torch): imported by the control tier and the Prefect UI form.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from jobs.datasets import RowError, check_message_list
from jobs.evals import _EvaluatedModel
from jobs.file_ids import FileId, parse_file_id
from jobs.hardware import AllowedHardware, ContainerImage, HardwareRequest, RequiredVramGb

QUESTIONS_PURPOSE = "multiple_choice"
DEFAULT_CATEGORY = "default"
MAX_CHOICES = 26  # one letter each
TEMPLATE_FIELDS = {
    "question_template": ("question_text", "choices_text"),
    "choice_template": ("choice_char", "choice_text"),
    "answer_template": ("choice_char", "choice_text"),
}


@dataclass(frozen=True)
class Question:
    """One validated question: its choices in file order and the index of the correct one."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    category: str = DEFAULT_CATEGORY
    context: tuple[dict[str, Any], ...] = ()
    line: int = 0


def parse_question(row: Any, line: int = 0) -> Question:
    """A :class:`Question` from a row of a ``multiple_choice`` file; :class:`RowError` says what is wrong."""
    if not isinstance(row, dict):
        raise RowError(f"each line must be a JSON object, got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RowError("'question' must be a non-empty string")
    choices, correct = _choices(row.get("choices"))
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise RowError(f"'answer' must be the text of the correct choice, got {type(answer).__name__}")
    if answer is not None and answer not in choices:
        raise RowError(f"answer {answer!r} is not among the choices ({', '.join(map(repr, choices))})")
    if correct is None:
        if answer is None:
            raise RowError("'answer' is missing: give the text of the correct choice (or mark it with is_correct)")
        correct = choices.index(answer)
    elif answer is not None and choices.index(answer) != correct:
        raise RowError(f"answer {answer!r} disagrees with the choice marked is_correct ({choices[correct]!r})")
    category = row.get("category", DEFAULT_CATEGORY)
    if not isinstance(category, str) or not category.strip():
        raise RowError("'category' must be a non-empty string when given")
    question_id = row.get("id", line)
    if isinstance(question_id, bool) or not isinstance(question_id, (str, int)):
        raise RowError(f"'id' must be a string or an integer, got {type(question_id).__name__}")
    context = row.get("context", [])
    if context:
        check_message_list(context, "context")
    elif not isinstance(context, list):
        raise RowError("'context' must be a list of messages")
    return Question(str(question_id), question, choices, correct, category.strip(), tuple(context), line)


def check_question_row(row: Any) -> None:
    """The row validator of the ``multiple_choice`` purpose (:mod:`jobs.datasets`)."""
    parse_question(row)


def _choices(value: Any) -> tuple[tuple[str, ...], int | None]:
    """The choice texts, and the index marked ``is_correct`` (objects) or None (strings)."""
    if not isinstance(value, list) or len(value) < 2:
        got = "missing" if value is None else f"{len(value)}" if isinstance(value, list) else type(value).__name__
        raise RowError(f"'choices' must list at least 2 choices (got {got}); a question with one choice measures nothing")
    if len(value) > MAX_CHOICES:
        raise RowError(f"'choices' has {len(value)} entries; at most {MAX_CHOICES} (one letter each)")
    if all(isinstance(choice, str) for choice in value):
        texts, correct = value, None
    elif all(isinstance(choice, dict) for choice in value):
        texts, marked = [], []
        for index, choice in enumerate(value):
            if not isinstance(choice.get("text"), str) or not isinstance(choice.get("is_correct"), bool):
                raise RowError(f"choices[{index}] must be an object with a string 'text' and a boolean 'is_correct'")
            texts.append(choice["text"])
            marked += [index] if choice["is_correct"] else []
        if len(marked) != 1:
            raise RowError(f"exactly one choice must have is_correct true, got {len(marked)}")
        correct = marked[0]
    else:
        raise RowError("'choices' must be all strings, or all objects {'text': ..., 'is_correct': ...}")
    for index, text in enumerate(texts):
        if not text.strip():
            raise RowError(f"choices[{index}] is empty")
    duplicates = sorted({text for text in texts if texts.count(text) > 1})
    if duplicates:
        raise RowError(f"choices lists {', '.join(map(repr, duplicates))} more than once")
    return tuple(texts), correct


def template_problem(name: str, template: str) -> str | None:
    """What is wrong with a template (a field it cannot fill, bad braces), or None."""
    allowed = TEMPLATE_FIELDS[name]
    try:
        used = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as exc:
        return f"{name}: {exc} (write a literal brace as '{{{{' or '}}}}')"
    unknown = sorted(used - set(allowed))
    if unknown:
        return f"{name}: unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; use {', '.join('{' + f + '}' for f in allowed)}"
    if name == "answer_template" and not used:
        return "answer_template: must contain {choice_char} or {choice_text}, or every choice would get the same answer"
    return None


class MultipleChoiceConfig(_EvaluatedModel, HardwareRequest):
    """Parameters of ``eval/multiple-choice``: each choice's probability, by log-probability, and accuracy."""

    questions_file: FileId = Field(
        description="File ID of the questions (multiple_choice:file-…): one {'question', 'choices', 'answer', "
        "'category'} object per line.",
    )
    question_template: str = Field(
        "{question_text}\n{choices_text}",
        description="The user message: {question_text} and {choices_text} (the choices, one per line).",
    )
    choice_template: str = Field(
        "{choice_char}: {choice_text}",
        description="One line of {choices_text}: {choice_char} (A, B, …) and {choice_text}.",
    )
    answer_template: str = Field(
        "{choice_char}",
        description="The assistant answer scored for each choice: {choice_char} and/or {choice_text} "
        "(e.g. '{choice_text}' scores the choice's own words).",
    )
    randomize: bool = Field(
        True,
        description="Shuffle each question's choices (reproducibly, from `seed` and the question's id), so a "
        "preference for a position or letter does not look like knowledge.",
    )
    seed: int = Field(0, ge=0, description="Seed of the choice shuffle (with randomize).")
    batch_size: int = Field(8, ge=1, le=1024, description="Answer sequences scored per forward pass.")

    # Where the GPU stage runs (jobs.hardware): not part of the job ID
    allowed_hardware: AllowedHardware
    requires_vram_gb: RequiredVramGb
    image: ContainerImage

    @field_validator("questions_file")
    @classmethod
    def _questions_purpose(cls, value: str) -> str:
        purpose, _ = parse_file_id(value)
        if purpose != QUESTIONS_PURPOSE:
            raise ValueError(
                f"questions_file must be a {QUESTIONS_PURPOSE} file ({QUESTIONS_PURPOSE}:file-…), got a {purpose} file; "
                f"upload the questions with purpose '{QUESTIONS_PURPOSE}'"
            )
        return value

    @field_validator("question_template", "choice_template", "answer_template")
    @classmethod
    def _template_fields(cls, value: str, info) -> str:
        problem = template_problem(info.field_name, value)
        if problem:
            raise ValueError(problem)
        return value
