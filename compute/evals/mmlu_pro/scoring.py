"""Scoring MMLU-Pro replies and aggregating them per category.

Accuracy is correct / questions, with unparsable replies counted as wrong, and reported on their
own so a model that answers in an unexpected format is visible rather than merely "inaccurate".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from compute.evals.mmlu_pro.answers import extract_answer
from compute.evals.mmlu_pro.dataset import MmluProQuestion

OVERALL = "overall"  # category label of the all-questions row in tables


@dataclass(frozen=True)
class QuestionResult:
    """The outcome of one question (one line of ``results.jsonl``)."""

    question_id: int | str
    category: str
    raw_answer: str
    extracted_answer: str | None  # None: no option letter could be read from raw_answer
    correct_answer: str
    correct: bool

    @property
    def unparsable(self) -> bool:
        """True when no option letter could be read from the reply."""
        return self.extracted_answer is None

    def to_json(self) -> dict:
        """The record as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class CategoryScore:
    """Counts for one category, or for all questions (``category == OVERALL``)."""

    category: str
    n: int
    correct: int
    unparsable: int

    @property
    def accuracy(self) -> float:
        """Fraction answered correctly (unparsable replies count as wrong)."""
        return self.correct / self.n

    def to_json(self) -> dict:
        """The counts and accuracy as a JSON-ready dict."""
        return {**asdict(self), "accuracy": self.accuracy}


@dataclass(frozen=True)
class MmluProSummary:
    """Per-category scores (sorted by category) and the overall (micro-averaged) score."""

    categories: list[CategoryScore]
    overall: CategoryScore

    def to_json(self) -> dict:
        """The summary as a JSON-ready dict."""
        return {"overall": self.overall.to_json(), "categories": [c.to_json() for c in self.categories]}


def score_reply(question: MmluProQuestion, reply: str) -> QuestionResult:
    """Read the letter out of ``reply`` and compare it with the question's answer."""
    extracted = extract_answer(reply, len(question.options))
    return QuestionResult(
        question_id=question.question_id,
        category=question.category,
        raw_answer=reply,
        extracted_answer=extracted,
        correct_answer=question.answer,
        correct=extracted == question.answer,
    )


def summarize(results: Iterable[QuestionResult]) -> MmluProSummary:
    """Per-category and overall counts of questions, correct answers and unparsable replies."""
    counts: dict[str, list[int]] = {}
    for result in results:
        n, correct, unparsable = counts.setdefault(result.category, [0, 0, 0])
        counts[result.category] = [n + 1, correct + result.correct, unparsable + result.unparsable]
    if not counts:
        raise ValueError("no results to summarize: no question was evaluated")
    categories = [CategoryScore(name, *counts[name]) for name in sorted(counts)]
    overall = CategoryScore(
        OVERALL,
        n=sum(c.n for c in categories),
        correct=sum(c.correct for c in categories),
        unparsable=sum(c.unparsable for c in categories),
    )
    return MmluProSummary(categories=categories, overall=overall)


def summary_table(summary: MmluProSummary) -> list[dict[str, str | int | float]]:
    """Rows for a table artifact: one per category, then the overall row (accuracy rounded for display)."""
    return [
        {
            "category": score.category,
            "n": score.n,
            "correct": score.correct,
            "accuracy": round(score.accuracy, 4),
            "unparsable": score.unparsable,
        }
        for score in [*summary.categories, summary.overall]
    ]
