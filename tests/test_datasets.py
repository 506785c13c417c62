"""Dataset validation by purpose: every problem named by file, line and what is wrong."""

import json

import pytest

from jobs.datasets import DatasetError, validate_lines


def lines(*rows) -> list[bytes]:
    return [(row if isinstance(row, str) else json.dumps(row)).encode() + b"\n" for row in rows]


CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize(
    "row",
    [
        CHAT,
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {"messages": [{"role": "user", "content": [{"text": "parts without a type are fine"}]}]},
        {"text": "a base-model row"},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
    ],
)
def test_conversations_accept_openweights_row_shapes(row):
    assert validate_lines(lines(row), "conversations", "data.jsonl") == 1


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role must be one of system, user, assistant (got 'bot')"),
        ({"messages": [{"role": "user"}]}, "messages[0] has no 'content'"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string or a list of text parts"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "text": "x"}]}]}, "messages[0].content[0].type must be 'text'"),
        ({"messages": []}, "'messages' must be a non-empty list"),
        ({"messages": [CHAT["messages"][0]], "text": "x"}, "either 'messages' or 'text'"),
        ({"text": 3}, "'text' must be a string"),
        ({"question": "?"}, "needs 'messages'"),
    ],
)
def test_conversations_errors_name_the_file_the_line_and_the_problem(row, expected):
    with pytest.raises(DatasetError) as caught:
        validate_lines(lines(CHAT, row), "conversations", "train.jsonl")
    message = str(caught.value)
    assert message.startswith("train.jsonl, line 2: ")
    assert expected in message
    assert caught.value.problems[0][0] == 2


def test_preference_rows_need_prompt_chosen_and_rejected():
    with pytest.raises(DatasetError) as caught:
        validate_lines(lines({"prompt": [{"role": "user", "content": "q"}], "chosen": []}), "preference", "prefs.jsonl")
    assert "prefs.jsonl, line 1: preference rows need 'prompt', 'chosen' and 'rejected'; missing rejected" in str(caught.value)


def test_several_problems_are_reported_at_once_up_to_a_limit():
    rows = [CHAT] + ["{bad"] * 15
    with pytest.raises(DatasetError) as caught:
        validate_lines(lines(*rows), "conversations", "many.jsonl")
    assert len(caught.value.problems) == 10
    assert [line for line, _ in caught.value.problems] == list(range(2, 12))
    assert "and 5 more problem(s)" in str(caught.value)


def test_invalid_utf8_is_reported_with_its_line():
    with pytest.raises(DatasetError) as caught:
        validate_lines([json.dumps(CHAT).encode() + b"\n", b'{"text": "\xff"}\n'], "conversations", "bytes.jsonl")
    assert "bytes.jsonl, line 2: not valid UTF-8" in str(caught.value)


def test_blank_lines_are_skipped_but_an_empty_file_is_refused():
    assert validate_lines([b"\n", *lines(CHAT), b"  \n"], "conversations", "x.jsonl") == 1
    with pytest.raises(DatasetError, match="x.jsonl: the file has no rows"):
        validate_lines([b"\n"], "conversations", "x.jsonl")


def test_purposes_without_a_validator_are_opaque():
    assert validate_lines([b"anything at all\n", b"\x00\x01 binary-ish\n"], "custom_job_file", "script.py") == 2
