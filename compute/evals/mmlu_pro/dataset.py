"""Reading and validating JSONL files in MMLU-Pro format, one line at a time.

A line is one question, as in TIGER-Lab/MMLU-Pro::

    {"question_id": 70, "question": "...", "options": ["...", "..."], "answer": "C",
     "answer_index": 2, "cot_content": "A: Let's think step by step. ...", "category": "math", "src": "..."}

``question``, ``options`` (1 to 10 non-empty strings), ``answer`` (a letter A-J naming one of the
options) and ``category`` are required. ``answer_index``, when present, must agree with ``answer``;
``question_id`` defaults to the line number. One extension: ``split`` is ``"test"`` (the default:
evaluated) or ``"validation"``/``"dev"`` (few-shot examples), so one file can carry both, the way the
published dataset ships its test and validation splits. Other keys are ignored.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

LETTERS = "ABCDEFGHIJ"
MAX_OPTIONS = len(LETTERS)
EVAL_SPLIT = "test"
FEWSHOT_SPLITS = frozenset({"validation", "dev"})
_SPLITS = frozenset({EVAL_SPLIT}) | FEWSHOT_SPLITS


@dataclass(frozen=True)
class MmluProQuestion:
    """One validated question."""

    question_id: int | str
    question: str
    options: tuple[str, ...]
    answer: str  # the correct letter, within LETTERS[: len(options)]
    category: str
    split: str = EVAL_SPLIT
    cot_content: str | None = None
    src: str | None = None
    line: int = 0  # 1-based line in the file it was read from (0: built in code)

    @property
    def answer_index(self) -> int:
        """Index of the correct option."""
        return LETTERS.index(self.answer)

    @property
    def is_fewshot_example(self) -> bool:
        """True for rows of the validation/dev split, which serve as few-shot examples."""
        return self.split in FEWSHOT_SPLITS


@dataclass(frozen=True)
class RowProblem:
    """Something wrong with one line of a dataset file."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file  # line 0: the file as a whole
        return f"{where}: {self.message}"


class MmluProFormatError(ValueError):
    """A dataset file is not valid MMLU-Pro JSONL; ``problems`` lists each bad line (up to a cap)."""

    def __init__(self, file: str | Path, problems: list[RowProblem], truncated: bool = False):
        self.file = str(file)
        self.problems = problems
        self.truncated = truncated
        more = " (further problems not listed)" if truncated else ""
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{self.file} is not valid MMLU-Pro JSONL, {len(problems)} problem(s){more}:\n{lines}")


@dataclass(frozen=True)
class MmluProFileSummary:
    """What a valid file holds: question counts by split and by category of the evaluated split."""

    file: str
    eval_questions: int
    fewshot_examples: int
    eval_categories: dict[str, int] = field(default_factory=dict)
    fewshot_categories: dict[str, int] = field(default_factory=dict)


def _nonempty_str(row: dict, key: str, problems: list[str]) -> str | None:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if key not in row else f"got {value!r}"
        problems.append(f"'{key}' must be a non-empty string ({got})")
        return None
    return value


def _optional_str(row: dict, key: str, problems: list[str]) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        problems.append(f"'{key}' must be a string or null, got {type(value).__name__}")
        return None
    return value


def _options(row: dict, problems: list[str]) -> tuple[str, ...] | None:
    options = row.get("options")
    if not isinstance(options, list):
        got = "missing" if "options" not in row else f"got {type(options).__name__}"
        problems.append(f"'options' must be a list of 1 to {MAX_OPTIONS} strings ({got})")
        return None
    if not 1 <= len(options) <= MAX_OPTIONS:
        problems.append(f"'options' has {len(options)} entries; MMLU-Pro questions have 1 to {MAX_OPTIONS}")
        return None
    bad = [i for i, option in enumerate(options) if not isinstance(option, str) or not option.strip()]
    if bad:
        letters = ", ".join(LETTERS[i] for i in bad)
        problems.append(f"'options' entries {letters} are not non-empty strings")
        return None
    return tuple(options)


def _answer(row: dict, options: tuple[str, ...] | None, problems: list[str]) -> str | None:
    answer = row.get("answer")
    if not isinstance(answer, str) or len(answer) != 1 or answer not in LETTERS:
        got = "missing" if "answer" not in row else f"got {answer!r}"
        problems.append(f"'answer' must be one upper-case letter A-J ({got})")
        return None
    if options is not None and LETTERS.index(answer) >= len(options):
        problems.append(
            f"'answer' {answer!r} points past the {len(options)} options (valid: A-{LETTERS[len(options) - 1]})"
        )
        return None
    if "answer_index" in row and row["answer_index"] is not None:
        index = row["answer_index"]
        if not isinstance(index, int) or isinstance(index, bool):
            problems.append(f"'answer_index' must be an integer, got {index!r}")
            return None
        if index != LETTERS.index(answer):
            shown = LETTERS[index] if 0 <= index < MAX_OPTIONS else "out of range"
            problems.append(f"'answer_index' {index} ({shown}) disagrees with 'answer' {answer!r}")
            return None
    return answer


def _question_id(row: dict, line: int, problems: list[str]) -> int | str | None:
    if "question_id" not in row or row["question_id"] is None:
        return line
    value = row["question_id"]
    if isinstance(value, bool) or not isinstance(value, int | str) or (isinstance(value, str) and not value.strip()):
        problems.append(f"'question_id' must be an integer or a non-empty string, got {value!r}")
        return None
    return value


def parse_row(row: object, line: int) -> tuple[MmluProQuestion | None, list[str]]:
    """Validate one decoded JSON line; returns the question, or None and what is wrong with it."""
    if not isinstance(row, dict):
        return None, [f"expected a JSON object, got {type(row).__name__}"]
    problems: list[str] = []
    question_id = _question_id(row, line, problems)
    question = _nonempty_str(row, "question", problems)
    options = _options(row, problems)
    answer = _answer(row, options, problems)
    category = _nonempty_str(row, "category", problems)
    cot_content = _optional_str(row, "cot_content", problems)
    src = _optional_str(row, "src", problems)
    split = row.get("split", EVAL_SPLIT)
    if split not in _SPLITS:
        problems.append(f"'split' must be one of {sorted(_SPLITS)}, got {split!r}")
    if problems:
        return None, problems
    return (
        MmluProQuestion(
            question_id=question_id,
            question=question,
            options=options,
            answer=answer,
            category=category.strip(),
            split=split,
            cot_content=cot_content,
            src=src,
            line=line,
        ),
        [],
    )


def _scan(path: Path) -> Iterator[MmluProQuestion | RowProblem]:
    """Yield each line's question or problem; reads one line at a time, so memory stays flat."""
    name = str(path)
    first_line_of_id: dict[str, int] = {}
    seen_any = False
    if not path.is_file():
        raise FileNotFoundError(f"MMLU-Pro dataset file {name} does not exist or is not a file")
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RowProblem(name, line_no, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
                continue
            if not text.strip():
                continue  # blank lines (e.g. a trailing newline) carry no row
            seen_any = True
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RowProblem(name, line_no, f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            question, problems = parse_row(row, line_no)
            if question is None:
                yield RowProblem(name, line_no, "; ".join(problems))
                continue
            key = str(question.question_id)
            if key in first_line_of_id:
                yield RowProblem(
                    name, line_no, f"'question_id' {question.question_id!r} repeats line {first_line_of_id[key]}"
                )
                continue
            first_line_of_id[key] = line_no
            yield question
    if not seen_any:
        yield RowProblem(name, 0, "the file holds no questions")


def iter_mmlu_pro_file(path: str | Path, *, max_problems: int = 20) -> Iterator[MmluProQuestion]:
    """Stream a file's questions; raises ``MmluProFormatError`` after the scan if any line is invalid.

    Valid questions are yielded as they are read, so a consumer that must not act on a partially
    valid file should use ``load_mmlu_pro_file`` or ``validate_mmlu_pro_file`` first.
    """
    path = Path(path)
    problems: list[RowProblem] = []
    truncated = False
    for item in _scan(path):
        if isinstance(item, RowProblem):
            if len(problems) < max_problems:
                problems.append(item)
            else:
                truncated = True
        else:
            yield item
    if problems:
        raise MmluProFormatError(path, problems, truncated)


def load_mmlu_pro_file(path: str | Path, *, max_problems: int = 20) -> list[MmluProQuestion]:
    """All questions of a file (both splits), in file order; raises ``MmluProFormatError`` naming bad lines."""
    return list(iter_mmlu_pro_file(path, max_problems=max_problems))


def validate_mmlu_pro_file(path: str | Path, *, max_problems: int = 20) -> MmluProFileSummary:
    """Check a whole file without holding it in memory; returns counts or raises ``MmluProFormatError``."""
    eval_categories: Counter[str] = Counter()
    fewshot_categories: Counter[str] = Counter()
    for question in iter_mmlu_pro_file(path, max_problems=max_problems):
        (fewshot_categories if question.is_fewshot_example else eval_categories)[question.category] += 1
    return MmluProFileSummary(
        file=str(path),
        eval_questions=sum(eval_categories.values()),
        fewshot_examples=sum(fewshot_categories.values()),
        eval_categories=dict(sorted(eval_categories.items())),
        fewshot_categories=dict(sorted(fewshot_categories.items())),
    )


def check_mmlu_pro_row(row: object) -> None:
    """Row validator for files uploaded with purpose ``mmlu_pro`` (file and line are added by the caller)."""
    from jobs.datasets import RowError

    _, problems = parse_row(row, line=0)
    if problems:
        raise RowError("; ".join(problems))
