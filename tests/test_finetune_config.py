"""TrainingConfig: OpenWeights' defaults and validation rules, messages naming the field."""

import pytest

from jobs.finetune import TrainingConfig, evaluate_learning_rate
from jobs.registry import get_job_spec
from jobs.validation import InvalidJobError, validate_params

CONV = "conversations:file-" + "a" * 64
PREF = "preference:file-" + "b" * 64


def test_every_field_accepts_openweights_defaults():
    config = TrainingConfig(model="unsloth/Qwen2.5-0.5B-Instruct", training_file=CONV)
    expected = {
        "loss": "sft",
        "chat_template": "default",
        "finetuned_model_id": "{org_id}/{model_name}-{job_id}",
        "max_seq_length": 2048,
        "load_in_4bit": False,
        "is_peft": True,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "lora_bias": "none",
        "r": 16,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "use_rslora": True,
        "merge_before_push": True,
        "push_to_private": True,
        "epochs": 1,
        "max_steps": None,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 8,
        "warmup_steps": 5,
        "learning_rate": 1e-4,
        "logging_steps": 1,
        "optim": "adamw_8bit",
        "weight_decay": 0.01,
        "lr_scheduler_type": "linear",
        "seed": 3407,
        "beta": 0.1,
        "save_steps": 5000,
        "train_on_responses_only": True,
        "packing": True,  # OpenWeights v0.11
        "eval_batch_size": 8,
        "test_file_eval_steps": None,
        "test_file_eval_strategy": "epoch",
        "logp_callback_datasets": {},
        "eval_every_n_steps": 5000,
        "sampling_callbacks": None,
        "meta": None,
        "test_file": None,
    }
    assert {key: getattr(config, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"lora_dropout": 1.5}, "lora_dropout", "Dropout rate must be between 0 and 1"),
        ({"optim": "lion"}, "optim", "Optimizer must be one of"),
        ({"lr_scheduler_type": "exponential"}, "lr_scheduler_type", "Scheduler must be one of"),
        ({"learning_rate": -1.0}, "learning_rate", "Learning rate must be positive"),
        ({"learning_rate": "__import__('os')"}, "learning_rate", "may only use numbers"),
        ({"r": 0}, "r", "greater than or equal to 1"),
        ({"epochs": 0}, "epochs", "greater than or equal to 1"),
        ({"loss": "ppo"}, "loss", "Input should be 'sft', 'dpo', 'orpo' or 'weighted_sft'"),
        ({"finetuned_model_id": "no-slash"}, "finetuned_model_id", "format 'user/model'"),
        ({"finetuned_model_id": "unsloth/x"}, "finetuned_model_id", "org you have access to"),
        ({"finetuned_model_id": "{org_id}/{nope}"}, "finetuned_model_id", "unknown placeholder {nope}"),
        ({"eval_every_n_steps": 0}, "eval_every_n_steps", "must be positive"),
        ({"test_file_eval_strategy": "sometimes"}, "test_file_eval_strategy", "Input should be"),
        ({"loss": "dpo"}, "training_file", "loss='dpo' trains on a preference file"),
        ({"load_in_4bit": True, "logp_callback_datasets": {"x": CONV}}, "logp_callback_datasets", "does not work for 4-bit"),
        ({"unknown_knob": 1}, "unknown_knob", "unknown parameter"),
        ({"sampling_callbacks": [{"dataset": CONV, "max_tokens": 0}]}, "sampling_callbacks.0.max_tokens", "greater than 0"),
    ],
)
def test_invalid_values_fail_with_a_message_naming_the_field(change, field, message):
    raw = {"model": "org/base", "training_file": CONV, **change}
    with pytest.raises(InvalidJobError) as caught:
        validate_params(get_job_spec("finetune"), raw)
    problems = "\n".join(caught.value.problems)
    assert problems.startswith(f"{field}:") or f"\n{field}:" in problems, problems
    assert message in problems


def test_preference_losses_take_preference_files():
    for loss in ("dpo", "orpo"):
        assert TrainingConfig(model="org/base", training_file=PREF, loss=loss).beta == 0.1


@pytest.mark.parametrize(("expression", "value"), [(1e-4, 1e-4), ("1e-4 * 2", 2e-4), ("3e-4 / (2 ** 1)", 1.5e-4), (2, 2.0)])
def test_learning_rate_expressions(expression, value):
    assert evaluate_learning_rate(expression) == pytest.approx(value)


def test_output_model_name_fills_placeholders():
    config = TrainingConfig(
        model="meta-llama/Llama-3.1-8B",
        training_file=CONV,
        finetuned_model_id="{org_id}/{model_name}-{tag}-{job_id}",
        model_naming_extra_parameters={"tag": "v2", "org_id": "myorg"},
    )
    assert config.output_model_name(job_id="ftjob-1", org_id="ow") == "myorg/Llama-3.1-8B-v2-ftjob-1"


def test_a_learning_rate_expression_is_validated_to_its_value_and_the_form_still_takes_it():
    from flows.job_flow import signature_from_model

    config = TrainingConfig(model="org/base", training_file=CONV, learning_rate="1e-4 * 2")
    assert config.learning_rate == pytest.approx(2e-4) and isinstance(config.learning_rate, float)
    assert config.model_dump(mode="json")["learning_rate"] == config.learning_rate
    assert signature_from_model(TrainingConfig).parameters["learning_rate"].annotation == float | str


def test_any_string_parameter_is_a_name_placeholder_and_only_plain_names_are():
    config = TrainingConfig(
        model="meta-llama/Llama-3.1-8B", training_file=CONV, loss="sft", finetuned_model_id="{org_id}/{model_name}-{loss}-{optim}"
    )
    assert config.output_model_name(job_id="ftjob-1", org_id="myorg") == "myorg/Llama-3.1-8B-sft-adamw_8bit"
    for template, message in (("{org_id}/{epochs}", "unknown placeholder {epochs}"), ("{org_id}/{loss.upper}", "is not a placeholder")):
        with pytest.raises(InvalidJobError, match=message.replace("{", r"\{").replace("}", r"\}")):
            validate_params(get_job_spec("finetune"), {"model": "org/base", "training_file": CONV, "finetuned_model_id": template})


@pytest.mark.parametrize(
    ("environ", "variable", "org"),
    [
        ({}, None, None),  # nothing configured: no organisation is made up
        ({}, "prefect-org", "prefect-org"),
        ({"OW_HF_ORG": "env-org"}, "prefect-org", "env-org"),
        ({"HF_ORG": "hf-org", "HF_USER": "me"}, None, "hf-org"),  # OpenWeights' own settings
        ({"HF_USER": "me"}, "prefect-org", "prefect-org"),
        ({"OW_HF_ORG": "  "}, None, None),
    ],
)
def test_the_hub_organisation_is_the_configured_one(environ, variable, org):
    from jobs.finetune import hf_org_setting

    assert hf_org_setting(environ, variable) == org


def test_pushing_without_an_organisation_is_refused_before_training():
    from jobs.finetune import missing_hub_org

    pushing = TrainingConfig(model="org/base", training_file=CONV, push_to_hub=True)
    assert "OW_HF_ORG" in missing_hub_org(pushing, None)
    assert missing_hub_org(pushing, "myorg") is None
    assert missing_hub_org(TrainingConfig(model="org/base", training_file=CONV, push_to_hub=True, finetuned_model_id="me/x-{job_id}"), None) is None
    assert missing_hub_org(TrainingConfig(model="org/base", training_file=CONV), None) is None


def test_weighted_sft_does_not_pack_by_default_and_refuses_packing_when_asked():
    weighted = "weighted_conversations:file-" + "c" * 64
    assert TrainingConfig(model="org/base", training_file=weighted, loss="weighted_sft").packing is False
    with pytest.raises(ValueError, match="packing: not supported"):
        TrainingConfig(model="org/base", training_file=weighted, loss="weighted_sft", packing=True)
