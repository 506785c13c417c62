"""The evaluation jobs' parameter models: what they accept, and how they explain what they refuse."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from jobs.evals import InspectEvalConfig, InspectTaskRef, MmluProConfig, parse_eval_name


@pytest.mark.parametrize(
    ("eval_name", "expected"),
    [
        ("inspect_evals/gpqa_diamond", InspectTaskRef(registry_name="inspect_evals/gpqa_diamond")),
        ("my-pkg/task_1", InspectTaskRef(registry_name="my-pkg/task_1")),
        ("tasks.py", InspectTaskRef(file="tasks.py")),
        ("evals/tasks.py@arithmetic", InspectTaskRef(file="evals/tasks.py", task_name="arithmetic")),
        ("/abs/dir/tasks.py@t", InspectTaskRef(file="/abs/dir/tasks.py", task_name="t")),
        ("file-3f9a0c@my_task", InspectTaskRef(file="file-3f9a0c", task_name="my_task")),
        ("  inspect_evals/gsm8k  ", InspectTaskRef(registry_name="inspect_evals/gsm8k")),
    ],
)
def test_eval_name_forms_parse_to_registry_or_file_references(eval_name, expected):
    assert parse_eval_name(eval_name) == expected


@pytest.mark.parametrize(
    ("eval_name", "message"),
    [
        ("", "empty"),
        ("gpqa_diamond", "not recognised"),
        ("a/b/c", "not recognised"),
        ("tasks.py@", "must be a Python identifier"),
        ("tasks.py@not-a-name", "must be a Python identifier"),
        ("@task", "no file before '@'"),
        ("my tasks.py", "whitespace"),
    ],
)
def test_unparsable_eval_names_say_what_forms_are_accepted(eval_name, message):
    with pytest.raises(ValueError, match=message):
        parse_eval_name(eval_name)


def test_inspect_config_defaults_and_task_ref():
    config = InspectEvalConfig(model="org/model", eval_name="tasks.py@arithmetic", task_args={"n": 3})
    assert config.task_ref == InspectTaskRef(file="tasks.py", task_name="arithmetic")
    assert config.models_to_evaluate() == ["org/model"]
    assert config.epochs == 1 and config.limit is None and config.log_format == "eval"


def test_models_to_evaluate_with_adapters():
    only_adapters = InspectEvalConfig(model="base", lora_adapters=["ad1", "ad2"], eval_name="x/y")
    assert only_adapters.models_to_evaluate() == ["ad1", "ad2"]
    with_base = InspectEvalConfig(model="base", lora_adapters=["ad1"], include_base_model=True, eval_name="x/y")
    assert with_base.models_to_evaluate() == ["base", "ad1"]


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"eval_name": "gpqa"}, "eval_name", "not recognised"),
        ({"model_args": {"api_key": "sk-1"}}, "model_args", "may not set \\['api_key'\\]"),
        ({"model_args": {"base_url": "http://x"}}, "model_args", "may not set"),
        ({"task_args": {"not valid": 1}}, "task_args", "not a valid parameter name"),
        ({"task_args": {"class": 1}}, "task_args", "not a valid parameter name"),
        ({"limit": 0}, "limit", "greater than or equal to 1"),
        ({"epochs": 0}, "epochs", "greater than or equal to 1"),
        ({"temperature": -0.5}, "temperature", "greater than or equal to 0"),
        ({"model": "has space"}, "model", "whitespace"),
        ({"lora_adapters": ["a", "a"]}, "lora_adapters", "more than once"),
        ({"include_base_model": True}, "", "only meaningful with lora_adapters"),
        ({"unknown_option": 1}, "unknown_option", "Extra inputs are not permitted"),
        ({"task_args": "--n 3"}, "task_args", "valid dictionary"),
    ],
)
def test_inspect_config_rejections_name_the_field(overrides, field, message):
    params = {"model": "org/model", "eval_name": "inspect_evals/gpqa_diamond", **overrides}
    with pytest.raises(ValidationError) as caught:
        InspectEvalConfig(**params)
    error = caught.value.errors()[0]
    assert ".".join(str(p) for p in error["loc"]).startswith(field)
    assert re.search(message, str(caught.value))


def test_mmlu_pro_config_defaults():
    config = MmluProConfig(model="org/model", dataset_file="file-abc")
    assert config.num_fewshot == 0 and config.temperature == 0.0 and config.chain_of_thought
    assert config.categories == [] and config.fewshot_file is None and config.prompt_format == "chat"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"num_fewshot": -1}, "num_fewshot", "greater than or equal to 0"),
        ({"categories": ["math", "Math"]}, "categories", "more than once"),
        ({"categories": [" "]}, "categories", "empty name"),
        ({"dataset_file": " "}, "dataset_file", "must not be empty"),
        ({"max_tokens": 9000, "max_model_len": 8192}, "", "must be below max_model_len"),
        ({"prompt_format": "completion"}, "prompt_format", "'chat' or 'text'"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ],
)
def test_mmlu_pro_config_rejections_name_the_field(overrides, field, message):
    params = {"model": "org/model", "dataset_file": "file-abc", **overrides}
    with pytest.raises(ValidationError) as caught:
        MmluProConfig(**params)
    error = caught.value.errors()[0]
    assert ".".join(str(p) for p in error["loc"]).startswith(field)
    assert message in str(caught.value)
