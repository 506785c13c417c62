"""MMLU-Pro JSONL validation: every bad line is reported with its file, line number and what is wrong."""

from __future__ import annotations

import json

import pytest

from compute.evals.mmlu_pro import MmluProFormatError, load_mmlu_pro_file, validate_mmlu_pro_file
from compute.sample_datasets import mmlu_pro_rows, write_jsonl

GOOD = {
    "question_id": 1,
    "question": "What is 2 plus 2?",
    "options": ["3", "4", "5", "6"],
    "answer": "B",
    "answer_index": 1,
    "category": "math",
}


def _with(**changes) -> dict:
    row = dict(GOOD)
    for key, value in changes.items():
        if value is _DROP:
            row.pop(key)
        else:
            row[key] = value
    return row


_DROP = object()


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        (_with(question=_DROP), "'question' must be a non-empty string (missing)"),
        (_with(question="  "), "'question' must be a non-empty string"),
        (_with(options=_DROP), "'options' must be a list of 1 to 10 strings (missing)"),
        (_with(options="A, B"), "'options' must be a list of 1 to 10 strings (got str)"),
        (_with(options=[]), "'options' has 0 entries"),
        (_with(options=[str(i) for i in range(11)]), "'options' has 11 entries"),
        (_with(options=["3", "", "5", 6]), "'options' entries B, D are not non-empty strings"),
        (_with(answer="K"), "'answer' must be one upper-case letter A-J (got 'K')"),
        (_with(answer="b"), "'answer' must be one upper-case letter A-J (got 'b')"),
        (_with(answer=1), "'answer' must be one upper-case letter A-J (got 1)"),
        (_with(answer=_DROP), "'answer' must be one upper-case letter A-J (missing)"),
        (_with(answer="E", answer_index=4), "'answer' 'E' points past the 4 options (valid: A-D)"),
        (_with(answer_index=2), "'answer_index' 2 (C) disagrees with 'answer' 'B'"),
        (_with(answer_index="1"), "'answer_index' must be an integer"),
        (_with(category=_DROP), "'category' must be a non-empty string (missing)"),
        (_with(question_id=True), "'question_id' must be an integer or a non-empty string"),
        (_with(cot_content=3), "'cot_content' must be a string or null"),
        (_with(split="train"), "'split' must be one of ['dev', 'test', 'validation'], got 'train'"),
        ([1, 2], "expected a JSON object, got list"),
    ],
)
def test_a_bad_row_is_reported_with_file_line_and_reason(tmp_path, bad_row, message):
    path = write_jsonl(tmp_path / "data.jsonl", [_with(question_id=0), bad_row, _with(question_id=2)])
    with pytest.raises(MmluProFormatError) as caught:
        validate_mmlu_pro_file(path)
    assert [(p.file, p.line) for p in caught.value.problems] == [(str(path), 2)]
    assert message in caught.value.problems[0].message
    assert f"{path}:2: " in str(caught.value)


def test_all_problems_of_a_row_and_of_the_file_are_listed(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [
        json.dumps(GOOD),
        "{not json",
        json.dumps(_with(question_id=3, answer="Z", category="")),
        json.dumps(_with(question_id=1)),  # repeats the ID of line 1
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(MmluProFormatError) as caught:
        load_mmlu_pro_file(path)
    problems = caught.value.problems
    assert [p.line for p in problems] == [2, 3, 4]
    assert "invalid JSON" in problems[0].message
    assert "'answer'" in problems[1].message and "'category'" in problems[1].message
    assert "'question_id' 1 repeats line 1" in problems[2].message


def test_the_problem_list_is_capped(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [_with(question_id=i, answer="Z") for i in range(30)])
    with pytest.raises(MmluProFormatError) as caught:
        validate_mmlu_pro_file(path, max_problems=5)
    assert len(caught.value.problems) == 5 and caught.value.truncated
    assert "further problems not listed" in str(caught.value)


def test_non_utf8_line_is_reported_with_its_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(MmluProFormatError) as caught:
        validate_mmlu_pro_file(path)
    assert caught.value.problems[0].line == 2 and "not UTF-8" in caught.value.problems[0].message


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(MmluProFormatError, match="holds no questions"):
        validate_mmlu_pro_file(empty)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        validate_mmlu_pro_file(tmp_path / "missing.jsonl")


def test_valid_rows_load_with_defaults_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "data.jsonl"
    minimal = {"question": "Q?", "options": ["x"], "answer": "A", "category": " law "}
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(minimal) + "\n", encoding="utf-8")
    first, second = load_mmlu_pro_file(path)
    assert first.options == ("3", "4", "5", "6") and first.answer_index == 1 and first.line == 1
    assert second.question_id == 3 and second.line == 3  # defaults to the line number
    assert second.category == "law" and second.split == "test" and second.cot_content is None


def test_sample_dataset_is_valid_and_has_both_splits_and_option_counts(tmp_path):
    rows = mmlu_pro_rows(questions_per_category=4, fewshot_per_category=3)
    summary = validate_mmlu_pro_file(write_jsonl(tmp_path / "sample.jsonl", rows))
    assert summary.eval_categories == {"math": 4, "other": 4, "physics": 4}
    assert summary.fewshot_categories == {"math": 3, "other": 3, "physics": 3}
    option_counts = {len(r["options"]) for r in rows}
    assert {4, 10} <= option_counts
    assert len({r["answer"] for r in rows}) >= 5  # the correct letter moves around
