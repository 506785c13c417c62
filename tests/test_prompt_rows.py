"""Inference input rows, prompt rendering, stop strings and context budgets (pure; the tiny tokenizer)."""

import json

import pytest

from compute.generation.completions import find_stop, stop_holdback
from compute.generation.context_length import (
    PromptTooLongError,
    completion_budget,
    effective_max_model_len,
    model_context_limit,
)
from compute.generation.prompts import ChatTemplateMissingError, encode_chat, encode_text
from compute.generation.rows import (
    PromptRow,
    batched,
    inference_row_check,
    read_prompt_rows,
    validate_prompt_file,
)
from compute.generation.sampling import SamplingSettings
from jobs.datasets import DatasetError, RowError
from jobs.inference import InferenceConfig

USER = {"role": "user", "content": "What is 2 plus 2?"}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


BAD_ROWS = {
    "not JSON": ('{"messages": [', "not valid JSON"),
    "not an object": ("[1, 2]", "each line must be a JSON object, got list"),
    "neither messages nor text": ('{"prompt": "hi"}', "an inference row needs 'messages' (a chat) or 'text'"),
    "both messages and text": (json.dumps({"messages": [USER], "text": "x"}), "a row has either 'messages' or 'text', not both"),
    "empty messages": ('{"messages": []}', "'messages' must be a non-empty list of messages"),
    "unknown role": (json.dumps({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].role must be one of system, user, assistant"),
    "content not text": (json.dumps({"messages": [{"role": "user", "content": 3}]}), "messages[0].content must be a string or a list of text parts"),
    "image part": (
        json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "text": "x"}]}]}),
        "messages[0].content[0].type must be 'text'",
    ),
    "text not a string": ('{"text": 5}', "'text' must be a string, got int"),
    "preference row": (
        json.dumps({"prompt": [USER], "chosen": [USER], "rejected": [USER]}),
        "prompt/chosen/rejected rows are for preference training",
    ),
}


@pytest.mark.parametrize(("line", "message"), BAD_ROWS.values(), ids=BAD_ROWS)
def test_malformed_row_is_reported_with_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "prompts.jsonl", [json.dumps({"text": "fine"}), "", line])
    with pytest.raises(DatasetError) as caught:
        validate_prompt_file(path)
    assert f"{path}, line 3: {message}" in str(caught.value)
    with pytest.raises(DatasetError, match="line 3"):
        list(read_prompt_rows(path))


def test_validation_reports_every_bad_line_at_once(tmp_path):
    path = write_lines(tmp_path / "prompts.jsonl", ["{", json.dumps({"text": "ok"}), "[]", '{"text": 1}'])
    with pytest.raises(DatasetError) as caught:
        validate_prompt_file(path)
    assert [line for line, _ in caught.value.problems] == [1, 3, 4]


def test_invalid_utf8_is_reported_with_its_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DatasetError, match=r"line 2: not valid UTF-8"):
        validate_prompt_file(path)


def test_prefill_with_a_text_row_is_rejected_naming_the_line(tmp_path):
    path = write_lines(tmp_path / "prompts.jsonl", [json.dumps({"messages": [USER]}), json.dumps({"text": "1 plus 1 is"})])
    assert validate_prompt_file(path) == 2
    with pytest.raises(DatasetError, match=r"line 2: prefill is set but this is a text row"):
        validate_prompt_file(path, prefill="Sure,")


def test_rows_stream_in_order_with_their_line_numbers_and_flattened_content(tmp_path):
    parts = {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2 plus 2?"}]}
    path = write_lines(
        tmp_path / "prompts.jsonl",
        [json.dumps({"messages": [parts], "id": "a"}), "   ", json.dumps({"text": "2 plus 2 is", "id": "b"})],
    )
    rows = list(read_prompt_rows(path))
    assert [(row.line, row.row["id"]) for row in rows] == [(1, "a"), (3, "b")]
    assert rows[0].messages == [USER]
    assert rows[1].text == "2 plus 2 is"


def test_the_control_tier_row_check_applies_the_same_rules():
    check = inference_row_check(prefill="Sure,")
    check({"messages": [USER]})
    with pytest.raises(RowError, match="prefill is set"):
        check({"text": "x"})


@pytest.mark.parametrize(("size", "expected"), [(2, [[1, 2], [3, 4], [5]]), (5, [[1, 2, 3, 4, 5]]), (9, [[1, 2, 3, 4, 5]])])
def test_batched_keeps_order_and_a_short_last_batch(size, expected):
    assert list(batched(iter([1, 2, 3, 4, 5]), size)) == expected


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        list(batched([1], 0))


# -- prompts --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_chat_prompt_ends_with_the_generation_prompt_then_the_prefill(tokenizer):
    ids = encode_chat(tokenizer, [USER], prefill="Sure, 2 plus")
    text = tokenizer.decode(ids)
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 plus 2?<|eot_id|>")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nSure, 2 plus")
    assert text.count("<|begin_of_text|>") == 1


def test_a_final_assistant_message_is_continued_instead_of_the_prefill(tokenizer):
    ids = encode_chat(tokenizer, [USER, {"role": "assistant", "content": "It is"}], prefill="ignored")
    assert tokenizer.decode(ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\nIt is")


def test_without_continuation_a_final_assistant_message_is_a_finished_turn(tokenizer):
    ids = encode_chat(tokenizer, [USER, {"role": "assistant", "content": "4."}], continue_final_message=False)
    assert tokenizer.decode(ids).endswith("4.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_text_prompt_starts_with_one_bos(tokenizer):
    assert tokenizer.decode(encode_text(tokenizer, "2 plus 2 is")) == "<|begin_of_text|>2 plus 2 is"
    assert tokenizer.decode(encode_text(tokenizer, "<|begin_of_text|>2 plus")) == "<|begin_of_text|>2 plus"


def test_chat_rows_need_a_chat_template(tokenizer):
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        with pytest.raises(ChatTemplateMissingError, match="no chat template"):
            encode_chat(tokenizer, [USER])
    finally:
        tokenizer.chat_template = template


# -- stop strings, context, sampling --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stops", "index"),
    [("abc###def", ["###"], 3), ("abc", ["x"], None), ("a\n\nb END", ["END", "\n\n"], 1), ("", ["x"], None)],
)
def test_find_stop_gives_the_earliest_stop(text, stops, index):
    assert find_stop(text, stops) == index


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [("hello #", ["###"], 1), ("hello ##", ["###"], 2), ("hello", ["###"], 0), ("abcEN", ["END", "N!"], 2), ("x", [], 0)],
)
def test_stop_holdback_keeps_back_what_may_start_a_stop(text, stops, held):
    assert stop_holdback(text, stops) == held


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "context", "budget"), [(10, 5, 100, 5), (95, 20, 100, 5), (99, 20, 100, 1)]
)
def test_completion_budget_is_cut_where_the_context_ends(prompt, max_tokens, context, budget):
    assert completion_budget(prompt, max_tokens, context) == budget


def test_a_prompt_that_fills_the_context_is_refused():
    with pytest.raises(PromptTooLongError, match="the prompt has 100 tokens but the context length"):
        completion_budget(100, 5, 100)


def test_max_model_len_is_capped_at_the_model_positions(tiny_model_dir, tmp_path):
    assert model_context_limit(tiny_model_dir) == 2048
    assert effective_max_model_len(8192, tiny_model_dir) == 2048
    assert effective_max_model_len(512, tiny_model_dir) == 512
    assert effective_max_model_len(8192, tmp_path) == 8192  # no config.json: nothing to cap with


def test_sampling_settings_come_from_the_inference_config():
    config = InferenceConfig(
        model="org/m",
        input_file="conversations:file-" + "a" * 64,
        max_tokens=7,
        min_tokens=2,
        temperature=0,
        top_p=0.5,
        stop=["\n"],
        n_completions_per_prompt=3,
        logprobs=4,
        seed=11,
    )
    assert SamplingSettings.from_inference_config(config) == SamplingSettings(
        max_tokens=7, min_tokens=2, temperature=0, top_p=0.5, stop=("\n",), n=3, logprobs=4, seed=11
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens must be between 0 and max_tokens"),
        ({"top_p": 0}, "top_p must be in (0, 1]"),
        ({"n": 0}, "n must be at least 1"),
        ({"stop": ("",)}, "stop strings must not be empty"),
    ],
)
def test_sampling_settings_refuse_impossible_values(values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        SamplingSettings(**values)


def test_prompt_row_defaults():
    assert PromptRow(1, {"text": "x"}, text="x").messages is None
