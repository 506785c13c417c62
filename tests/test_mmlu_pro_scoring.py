"""Scoring and aggregation: per-category counts equal an independent recount of the records."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from compute.evals.mmlu_pro import MmluProQuestion, score_reply, summarize, summary_table
from compute.evals.mmlu_pro.dataset import LETTERS


def _question(i: int, category: str, options: int) -> MmluProQuestion:
    return MmluProQuestion(
        question_id=i,
        question=f"q{i}",
        options=tuple(f"o{j}" for j in range(options)),
        answer=LETTERS[i % options],
        category=category,
    )


def test_score_reply_records_raw_extracted_and_correct_letters():
    question = _question(2, "law", 4)  # answer C
    right, wrong, unreadable = (score_reply(question, r) for r in ("The answer is (C).", "B", "no idea"))
    assert (right.extracted_answer, right.correct, right.unparsable) == ("C", True, False)
    assert (wrong.extracted_answer, wrong.correct, wrong.unparsable) == ("B", False, False)
    assert (unreadable.extracted_answer, unreadable.correct, unreadable.unparsable) == (None, False, True)
    assert unreadable.raw_answer == "no idea" and unreadable.correct_answer == "C"
    assert right.to_json() == {
        "question_id": 2, "category": "law", "raw_answer": "The answer is (C).",
        "extracted_answer": "C", "correct_answer": "C", "correct": True,
    }


def test_summary_equals_an_independent_recount():
    rng = random.Random(7)
    replies = ["The answer is ({})", "{}", "answer: ({})", "I am not sure", "", "{}."]
    results = []
    for i in range(300):
        question = _question(i, rng.choice(["math", "law", "biology", "computer science"]), rng.choice([4, 10]))
        letter = rng.choice(LETTERS[: len(question.options)])
        results.append(score_reply(question, rng.choice(replies).format(letter)))

    recount: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in results:
        recount[r.category][0] += 1
        recount[r.category][1] += int(r.extracted_answer == r.correct_answer)
        recount[r.category][2] += int(r.extracted_answer is None)

    summary = summarize(results)
    assert [c.category for c in summary.categories] == sorted(recount)
    for score in summary.categories:
        assert [score.n, score.correct, score.unparsable] == recount[score.category]
        assert score.accuracy == pytest.approx(recount[score.category][1] / recount[score.category][0])
    assert summary.overall.n == 300
    assert summary.overall.correct == sum(v[1] for v in recount.values())
    assert summary.overall.unparsable == sum(v[2] for v in recount.values())
    assert 0 < summary.overall.unparsable < 300 and 0 < summary.overall.correct < 300


def test_table_has_a_row_per_category_then_overall():
    results = [
        score_reply(_question(0, "math", 4), "The answer is (A)"),
        score_reply(_question(1, "math", 4), "gibberish"),
        score_reply(_question(2, "law", 10), "C"),
    ]
    assert summary_table(summarize(results)) == [
        {"category": "law", "n": 1, "correct": 1, "accuracy": 1.0, "unparsable": 0},
        {"category": "math", "n": 2, "correct": 1, "accuracy": 0.5, "unparsable": 1},
        {"category": "overall", "n": 3, "correct": 2, "accuracy": 0.6667, "unparsable": 1},
    ]


def test_summarizing_nothing_is_an_error():
    with pytest.raises(ValueError, match="no question was evaluated"):
        summarize([])
