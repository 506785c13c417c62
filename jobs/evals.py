"""Parameter models of the evaluation jobs: ``eval/inspect`` and ``eval/mmlu-pro``.

Both evaluate a served model (``model`` plus optional ``lora_adapters``); the compute lives in
``compute/evals/``. These models are pure pydantic so the control tier imports them cheaply; file
references (``dataset_file``, a task file in ``eval_name``) are file IDs or paths that the flow
resolves to local paths before calling compute.
"""

from __future__ import annotations

import keyword
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from jobs.hardware import AllowedHardware, ContainerImage, HardwareRequest, RequiredVramGb

# `package/task_name`, the form inspect-ai gives tasks that installed packages register.
_REGISTRY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*/[A-Za-z_][A-Za-z0-9_]*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# model_args keys the runner sets from the endpoint it is given; a value here would be ignored or,
# worse, put a credential into the job parameters (which are logged and hashed into the job ID).
RESERVED_MODEL_ARGS = frozenset(
    {"api_key", "base_url", "service", "service_base_url", "api_key_var", "http_client"}
)

EVAL_NAME_FORMS = (
    "a registry name 'package/task_name' of an installed package (e.g. 'inspect_evals/gpqa_diamond'), "
    "a task file 'path/tasks.py' or 'path/tasks.py@task_name', "
    "or an uploaded task file ID with the task name 'FILE_ID@task_name'"
)


class InspectTaskRef(BaseModel):
    """A parsed ``eval_name``: either a registry task or a task file (path or file ID) and task name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry_name: str | None = Field(
        None, description="'package/task_name' registered by an installed package; None for a task file."
    )
    file: str | None = Field(
        None,
        description="Path or file ID of the .py file that defines @task functions; None for a registry task.",
    )
    task_name: str | None = Field(
        None,
        description="Name of the @task in `file`; None runs every @task the file defines (registry tasks: None).",
    )

    @property
    def is_file(self) -> bool:
        """True when the task comes from a task file rather than an installed package."""
        return self.file is not None


def parse_eval_name(eval_name: str) -> InspectTaskRef:
    """Parse an ``eval_name`` into a registry reference or a task-file reference.

    Forms: ``package/task_name`` (registry); ``path/to/tasks.py`` or ``path/to/tasks.py@task``
    (task file); ``FILE_ID@task`` (a task file uploaded to the store, whose ID need not end in
    ``.py``, so its task is always named). Raises ``ValueError`` naming what is wrong.
    """
    value = eval_name.strip()
    if not value:
        raise ValueError(f"eval_name is empty; expected {EVAL_NAME_FORMS}")
    if any(ch.isspace() for ch in value):
        raise ValueError(f"eval_name {eval_name!r} contains whitespace; expected {EVAL_NAME_FORMS}")
    if "@" in value:
        file, _, task_name = value.rpartition("@")
        if not file:
            raise ValueError(f"eval_name {eval_name!r} names a task but no file before '@'")
        if not _IDENTIFIER.match(task_name):
            raise ValueError(
                f"eval_name {eval_name!r}: the task name after '@' must be a Python identifier, got {task_name!r}"
            )
        return InspectTaskRef(file=file, task_name=task_name)
    if value.endswith(".py"):
        return InspectTaskRef(file=value)
    if _REGISTRY_NAME.match(value):
        return InspectTaskRef(registry_name=value)
    raise ValueError(f"eval_name {eval_name!r} is not recognised; expected {EVAL_NAME_FORMS}")


def _check_model_reference(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(
            f"{field} is empty; give a Hugging Face repo ID, a local path or an uploaded model ID"
        )
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{field} {value!r} contains whitespace; a model reference is a single token")
    return value


class _EvaluatedModel(BaseModel):
    """Which model(s) an evaluation runs against: one served base model, optionally with LoRA adapters."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        ...,
        description="Model to evaluate: a Hugging Face repo ID, or a model produced by a fine-tuning job "
        "(a LoRA adapter is served on top of its base model).",
    )
    lora_adapters: list[str] = Field(
        default_factory=list,
        description="LoRA adapters served on top of `model`; each is evaluated as its own model. "
        "Empty: only `model` is evaluated.",
    )
    include_base_model: bool = Field(
        False,
        description="With `lora_adapters`, also evaluate `model` itself (without an adapter) for comparison.",
    )
    max_model_len: int = Field(
        8192,
        ge=256,
        le=1_048_576,
        description="Context length the model is served with (prompt + completion tokens).",
    )

    @field_validator("model")
    @classmethod
    def _model_reference(cls, value: str) -> str:
        return _check_model_reference(value, "model")

    @field_validator("lora_adapters")
    @classmethod
    def _adapter_references(cls, value: list[str]) -> list[str]:
        cleaned = [_check_model_reference(adapter, f"lora_adapters[{i}]") for i, adapter in enumerate(value)]
        duplicates = sorted({a for a in cleaned if cleaned.count(a) > 1})
        if duplicates:
            raise ValueError(f"lora_adapters lists {duplicates} more than once")
        return cleaned

    @model_validator(mode="after")
    def _base_model_flag(self) -> _EvaluatedModel:
        if self.include_base_model and not self.lora_adapters:
            raise ValueError(
                "include_base_model is only meaningful with lora_adapters (the base model is always "
                "evaluated when there are none)"
            )
        return self

    def models_to_evaluate(self) -> list[str]:
        """Model references evaluated, in order: the base model (when evaluated), then each adapter."""
        if not self.lora_adapters:
            return [self.model]
        return ([self.model] if self.include_base_model else []) + list(self.lora_adapters)


class InspectEvalConfig(_EvaluatedModel, HardwareRequest):
    """Parameters of ``eval/inspect``: run an inspect-ai task against the served model(s)."""

    eval_name: str = Field(..., description=f"The inspect-ai task to run: {EVAL_NAME_FORMS}.")
    task_args: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Arguments of the @task function, by parameter name (JSON values). "
        "Names the task does not accept are rejected before the model is served.",
    )
    model_args: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Extra arguments of inspect's OpenAI-compatible model provider (e.g. 'emulate_tools'). "
        "The endpoint URL and API key are set by the job, not here.",
    )
    limit: int | None = Field(
        None, ge=1, description="Evaluate only the first N samples of each task; None: all."
    )
    epochs: int = Field(
        1, ge=1, le=100, description="How many times each sample is run (scores are averaged)."
    )
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="Sampling temperature; None keeps the task's own generate config."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=1_048_576,
        description="Maximum tokens per completion; None keeps the task's own setting.",
    )
    seed: int | None = Field(None, description="Sampling seed passed to the model API; None: no seed.")
    max_connections: int = Field(
        16,
        ge=1,
        le=1024,
        description="Concurrent requests to the served model (also bounds samples in flight).",
    )
    log_format: Literal["eval", "json"] = Field(
        "eval",
        description="Format of the inspect log written to the job's artifacts (both open in `inspect view`).",
    )
    options: dict[str, JsonValue] | str = Field(
        default_factory=dict,
        description="More options of inspect, as `inspect eval` takes them on its command line "
        "('--top-p 0.9 --limit 10 -T count=3', as OpenWeights' inspect job takes them) or as inspect_ai.eval() "
        "keyword arguments ({'top_p': 0.9, 'message_limit': 20}). Checked against the installed inspect-ai before "
        "any GPU; options this job has a parameter for (limit, temperature, -T, …) are moved into it.",
    )

    # Where the GPU stage runs (jobs.hardware): not part of the job ID
    allowed_hardware: AllowedHardware
    requires_vram_gb: RequiredVramGb
    image: ContainerImage

    @model_validator(mode="before")
    @classmethod
    def _options_into_parameters(cls, data):
        # Before the fields are validated, so a moved option is checked as its parameter (bounds and all).
        if isinstance(data, dict) and data.get("options"):
            from jobs.inspect_options import move_options_into_parameters

            return move_options_into_parameters(data)
        return data

    @field_validator("options")
    @classmethod
    def _options_are_inspects(cls, value: dict[str, JsonValue] | str) -> dict[str, JsonValue]:
        if not value:
            return {}
        from jobs.inspect_options import check_options, parse_options

        options = parse_options(value)  # already a dict unless the validator above could not read it
        check_options(options)
        return options

    @field_validator("eval_name")
    @classmethod
    def _eval_name_parses(cls, value: str) -> str:
        parse_eval_name(value)  # raises ValueError naming the accepted forms
        return value.strip()

    @field_validator("task_args")
    @classmethod
    def _task_arg_names(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        for name in value:
            if not _IDENTIFIER.match(name) or keyword.iskeyword(name):
                raise ValueError(f"task_args key {name!r} is not a valid parameter name of a @task function")
        return value

    @field_validator("model_args")
    @classmethod
    def _model_arg_names(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        reserved = sorted(RESERVED_MODEL_ARGS & value.keys())
        if reserved:
            raise ValueError(
                f"model_args may not set {reserved}: the job points inspect at the served model's endpoint itself"
            )
        for name in value:
            if not _IDENTIFIER.match(name):
                raise ValueError(f"model_args key {name!r} is not a valid argument name")
        return value

    @property
    def task_ref(self) -> InspectTaskRef:
        """The parsed ``eval_name``."""
        return parse_eval_name(self.eval_name)


class MmluProConfig(_EvaluatedModel, HardwareRequest):
    """Parameters of ``eval/mmlu-pro``: multiple-choice accuracy on an MMLU-Pro-format JSONL file."""

    dataset_file: str = Field(
        ...,
        description="File ID of a JSONL file in MMLU-Pro format (question, options, answer, category per line). "
        'Rows with "split": "validation" (or "dev") are few-shot examples; all others are evaluated.',
    )
    fewshot_file: str | None = Field(
        None,
        description="File ID of a separate MMLU-Pro-format file whose rows are the few-shot examples; "
        "None: use the validation rows of `dataset_file`.",
    )
    num_fewshot: int = Field(
        0,
        ge=0,
        le=20,
        description="Worked examples of the same category shown before each question; 0 = zero-shot. "
        "MMLU-Pro's published protocol is 5-shot with chain of thought.",
    )
    categories: list[str] = Field(
        default_factory=list,
        description="Evaluate only these categories (as in the file); empty: all categories.",
    )
    chain_of_thought: bool = Field(
        True,
        description="Ask the model to reason step by step before 'The answer is (X)'; few-shot examples then show "
        "their `cot_content`. False asks for the answer directly.",
    )
    prompt_format: Literal["chat", "text"] = Field(
        "chat",
        description="'chat': messages rendered with the model's chat template (instruction-tuned models); "
        "'text': one plain-text prompt (base models), generation stops at the next 'Question:'.",
    )
    max_tokens: int = Field(
        2048,
        ge=1,
        le=1_048_576,
        description="Maximum tokens per answer; chain of thought needs room to reason.",
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 = greedy decoding.")
    limit: int | None = Field(
        None, ge=1, description="Evaluate only the first N selected questions (in file order); None: all."
    )

    # Where the GPU stage runs (jobs.hardware): not part of the job ID
    allowed_hardware: AllowedHardware
    requires_vram_gb: RequiredVramGb
    image: ContainerImage

    @field_validator("dataset_file", "fewshot_file")
    @classmethod
    def _file_reference(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("a file reference must not be empty; give the ID returned by the file upload")
        return value

    @field_validator("categories")
    @classmethod
    def _category_names(cls, value: list[str]) -> list[str]:
        cleaned = [c.strip() for c in value]
        if any(not c for c in cleaned):
            raise ValueError("categories contains an empty name")
        folded = [c.casefold() for c in cleaned]
        duplicates = sorted({c for c in cleaned if folded.count(c.casefold()) > 1})
        if duplicates:
            raise ValueError(f"categories lists {duplicates} more than once")
        return cleaned

    @model_validator(mode="after")
    def _fits_context(self) -> MmluProConfig:
        if self.max_tokens >= self.max_model_len:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be below max_model_len ({self.max_model_len}) to leave room "
                "for the prompt"
            )
        return self
