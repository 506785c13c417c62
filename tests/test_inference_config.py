"""InferenceConfig: OpenWeights' fields and defaults; bad values rejected with messages naming the field."""

import pytest
from pydantic import ValidationError

from jobs.inference import InferenceConfig

CONV = "conversations:file-" + "a" * 64
PREF = "preference:file-" + "b" * 64


def make(**changes) -> InferenceConfig:
    return InferenceConfig(**{"model": "unsloth/Qwen2.5-0.5B-Instruct", "input_file": CONV, **changes})


def test_defaults_follow_openweights():
    config = make()
    expected = {
        "max_tokens": 600,
        "temperature": 1.0,
        "top_p": 1.0,
        "stop": [],
        "prefill": "",
        "min_tokens": 1,
        "max_model_len": 8192,
        "logprobs": None,
        "n_completions_per_prompt": 1,
        "seed": None,
        "quantization": None,
        "load_format": None,
        "job_id_suffix": None,
    }
    assert {key: getattr(config, key) for key in expected} == expected


def test_model_may_be_any_model_reference():
    for reference in ("org/model", "org/model@main", "/abs/adapter", "./rel/model", "ftjob-" + "c" * 64):
        assert make(model=reference).model == reference


def test_every_field_has_a_description():
    assert all(field.description for field in InferenceConfig.model_fields.values())


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"max_tokens": 0}, "max_tokens", "greater than 0"),
        ({"max_tokens": -5}, "max_tokens", "greater than 0"),
        ({"temperature": -0.1}, "temperature", "greater than or equal to 0"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"min_tokens": -1}, "min_tokens", "greater than or equal to 0"),
        ({"min_tokens": 700}, "min_tokens", "min_tokens (700) must not exceed max_tokens (600)"),
        ({"max_tokens": 8192}, "max_tokens", "max_tokens (8192) must be smaller than max_model_len (8192)"),
        ({"logprobs": -1}, "logprobs", "greater than or equal to 0"),
        ({"logprobs": 21}, "logprobs", "less than or equal to 20"),
        ({"n_completions_per_prompt": 0}, "n_completions_per_prompt", "greater than or equal to 1"),
        ({"stop": ["###", ""]}, "stop", "stop[1] is empty"),
        ({"input_file": PREF}, "input_file", "input_file must be a conversations file"),
        ({"input_file": "file-123"}, "input_file", "'file-123' is not a file ID"),
        ({"model": "not a model"}, "model", "model: 'not a model' is not a Hugging Face ID"),
        ({"model": ""}, "model", "model: a model reference is required"),
        ({"quantization": "Bits And Bytes"}, "quantization", "quantization must be one lowercase word"),
        ({"load_format": "x;rm -rf"}, "load_format", "load_format must be one lowercase word"),
        ({"temprature": 0.5}, "temprature", "Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(change, field, message):
    with pytest.raises(ValidationError) as caught:
        make(**change)
    text = str(caught.value)
    assert field in text
    assert message in text


def test_openweights_logprobs_and_sampling_values_are_accepted():
    config = make(temperature=0, top_p=0.9, logprobs=5, n_completions_per_prompt=4, stop=["\n\n"], prefill="Sure,")
    assert (config.temperature, config.logprobs, config.n_completions_per_prompt) == (0, 5, 4)


def test_quantization_and_load_format_pass_through_for_vllm():
    config = make(quantization="bitsandbytes", load_format="bitsandbytes")
    assert (config.quantization, config.load_format) == ("bitsandbytes", "bitsandbytes")
