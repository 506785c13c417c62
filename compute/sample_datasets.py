"""Small, deterministic datasets in the formats the jobs accept, for the demo, tests and benchmarks.

Arithmetic facts are easy for a tiny model to memorise, so a few optimiser steps visibly lower
the loss; the same generator feeds every format so the datasets stay consistent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def _facts(rows: int) -> list[tuple[int, int]]:
    return [(i % 10, (i * 3) % 10) for i in range(rows)]


def conversations_rows(rows: int = 64, system_prompt: str | None = None) -> list[dict]:
    """``{"messages": [...]}`` rows: a user asks a sum, the assistant answers it."""
    out = []
    for a, b in _facts(rows):
        messages = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": f"What is {a} plus {b}?"})
        messages.append({"role": "assistant", "content": f"{a} plus {b} is {a + b}."})
        out.append({"messages": messages})
    return out


def preference_rows(rows: int = 64) -> list[dict]:
    """``{"prompt", "chosen", "rejected"}`` rows as message lists: the right sum is preferred."""
    out = []
    for a, b in _facts(rows):
        out.append(
            {
                "prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                "chosen": [{"role": "assistant", "content": f"{a} plus {b} is {a + b}."}],
                "rejected": [{"role": "assistant", "content": f"{a} plus {b} is {a + b + 3}."}],
            }
        )
    return out


def text_rows(rows: int = 64) -> list[dict]:
    """``{"text": ...}`` rows for base-model (non-chat) training and completion prompts."""
    return [{"text": f"{a} plus {b} is {a + b}."} for a, b in _facts(rows)]


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write rows as UTF-8 JSON Lines; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _mmlu_pro_row(
    question_id: int, category: str, question: str, reasoning: str, correct: str, distractors: list[str], split: str
) -> dict:
    """One MMLU-Pro row with the correct option at a position that varies with ``seed``."""
    options = list(distractors)
    position = question_id % (len(options) + 1)
    options.insert(position, correct)
    letter = "ABCDEFGHIJ"[position]
    return {
        "question_id": question_id,
        "question": question,
        "options": options,
        "answer": letter,
        "answer_index": position,
        "cot_content": f"A: Let's think step by step. {reasoning} The answer is ({letter}).",
        "category": category,
        "src": f"ow-sample-{category.replace(' ', '-')}",
        "split": split,
    }


def mmlu_pro_rows(questions_per_category: int = 4, fewshot_per_category: int = 3) -> list[dict]:
    """MMLU-Pro-format rows in three categories: ``math`` (10 options), ``physics`` (4 options) and
    ``other`` (3 to 6 options).

    Each category has ``fewshot_per_category`` rows with ``"split": "validation"`` (few-shot examples,
    listed first, as their own file section) and ``questions_per_category`` test rows.
    """
    rows: list[dict] = []
    next_id = 0
    for split, count in (("validation", fewshot_per_category), ("test", questions_per_category)):
        for i in range(count):
            a, b = (i * 7 + (split == "test") * 3) % 10, (i * 3 + 1) % 10
            total = a + b
            boxes = (a + 1) * (b + 1)
            largest = a + b + 10
            rows.append(
                _mmlu_pro_row(
                    next_id, "math", f"What is {a} plus {b}?", f"{a} plus {b} is {total}.",
                    str(total), [str(total + d) for d in (-4, -3, -2, -1, 1, 2, 3, 4, 5)], split,
                )
            )
            rows.append(
                _mmlu_pro_row(
                    next_id + 1, "physics", f"A crate holds {a + 1} rows of {b + 1} boxes each. How many boxes is that?",
                    f"{a + 1} times {b + 1} is {boxes}.", str(boxes), [str(boxes + d) for d in (-2, 1, 3)], split,
                )
            )
            rows.append(
                _mmlu_pro_row(
                    next_id + 2, "other", f"Which number is the largest of {a}, {b} and {largest}?",
                    f"{largest} is more than {a} and more than {b}.",
                    str(largest), [str(largest - d) for d in range(1, 3 + i % 4)], split,
                )
            )
            next_id += 3
    return rows
