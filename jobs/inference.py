"""Parameters of batch inference jobs, at parity with OpenWeights' ``InferenceConfig``.

Field names, defaults and meanings follow OpenWeights so existing job definitions carry over;
the differences are deliberate and listed here:

- ``input_file`` (OpenWeights: ``input_file_id``) is a file ID of this project's form,
  ``conversations:file-<sha256>``; its rows are ``{"messages": [...]}`` (chat) or ``{"text": ...}``
  (base-model prompts), see :mod:`compute.generation.rows`.
- ``model`` may be any model reference (:mod:`jobs.model_refs`), not only a Hub ID.
- The "model name contains 4bit, so switch on bitsandbytes" guess is not made: quantization is
  asked for explicitly (guessing from names is how jobs silently run on the wrong settings).
- ``max_model_len`` defaults to 8192 (OpenWeights writes 8196, a typo of the power of two).
- ``logprobs=0`` returns the sampled token's log-probability without alternatives (vLLM's meaning);
  leave it unset for none.
- ``seed`` is new: sampling is reproducible when it is set.

Pure pydantic (no torch): imported by the control tier and the Prefect UI form.
"""

from __future__ import annotations

import re

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from jobs.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplate
from jobs.file_ids import FileId, parse_file_id
from jobs.hardware import AllowedHardware, ContainerImage, HardwareRequest, RequiredVramGb
from jobs.identity import JobIdSuffix
from jobs.model_refs import parse_model_ref

MAX_TOP_LOGPROBS = 20  # OpenAI's and vLLM's default ceiling for alternatives per token
INPUT_PURPOSES = ("conversations",)
_VLLM_OPTION_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def check_model_reference(field: str, value: str) -> str:
    """The reference's syntax (existence is checked later, in the control tier, with the store)."""
    try:
        parse_model_ref(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    return value.strip()


def check_vllm_option(field: str, value: str | None) -> str | None:
    """A vLLM option value (quantization method, load format): one lowercase word, or unset."""
    if value is None:
        return None
    if not _VLLM_OPTION_RE.match(value):
        raise ValueError(
            f"{field} must be one lowercase word as vLLM spells it (e.g. 'awq', 'fp8', 'bitsandbytes'), got {value!r}"
        )
    return value


class InferenceConfig(HardwareRequest):
    """Generate completions for every row of a JSONL file with one model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="Model to sample from: a Hugging Face model ID, a local path, a fine-tuning job ID (ftjob-…) "
        "or an artifact URI. A LoRA adapter is loaded on top of the base model it names.",
    )
    input_file: FileId = Field(
        description="File ID of the prompts (conversations:file-…): one {'messages': [...]} or {'text': ...} "
        "object per line.",
    )
    max_tokens: int = Field(600, gt=0, description="Maximum number of tokens generated per completion.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 means greedy decoding.")
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Nucleus sampling: sample from the smallest token set holding this much probability (1 = all tokens).",
    )
    stop: list[str] = Field(
        default_factory=list,
        description="Strings that end a completion when generated; the completion is cut before the first one.",
    )
    prefill: str = Field(
        "",
        description="Text placed at the start of the assistant's answer; the model continues it. Chat rows only; "
        "a row whose last message is from the assistant is continued from that message instead.",
    )
    chat_template: ChatTemplate = DEFAULT_CHAT_TEMPLATE
    min_tokens: int = Field(
        1, ge=0, description="Minimum number of tokens generated before the end-of-sequence token is allowed."
    )
    max_model_len: int = Field(
        8192, ge=16, le=1_048_576, description="Context length (prompt + completion tokens) the model is run with."
    )
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Return per-token log-probabilities with this many top alternatives per token "
        f"(0 = the sampled token only, at most {MAX_TOP_LOGPROBS}); unset returns none.",
    )
    n_completions_per_prompt: int = Field(
        1, ge=1, le=1024, description="Number of completions sampled for every prompt."
    )
    seed: int | None = Field(None, ge=0, description="Random seed for sampling; unset samples differently on each run.")
    quantization: str | None = Field(
        None, description="vLLM quantization method (LLM(quantization=…)), e.g. 'bitsandbytes' for 4-bit models; GPU only."
    )
    load_format: str | None = Field(
        None, description="vLLM weight loading format (LLM(load_format=…)), e.g. 'bitsandbytes'; GPU only."
    )
    job_id_suffix: JobIdSuffix | None = Field(
        None, description="Suffix appended to the job ID (e.g. to tell runs apart): 1-64 letters, digits, '.', '_' or '-'."
    )

    # Where the GPU stage runs (jobs.hardware): not part of the job ID
    allowed_hardware: AllowedHardware
    requires_vram_gb: RequiredVramGb
    image: ContainerImage

    @field_validator("model")
    @classmethod
    def _model_reference(cls, value: str) -> str:
        return check_model_reference("model", value)

    @field_validator("input_file")
    @classmethod
    def _input_purpose(cls, value: str) -> str:
        purpose, _ = parse_file_id(value)
        if purpose not in INPUT_PURPOSES:
            raise ValueError(
                f"input_file must be a conversations file (conversations:file-…), got a {purpose} file; "
                "upload the prompts with purpose 'conversations'"
            )
        return value

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, value: list[str]) -> list[str]:
        for index, stop in enumerate(value):
            if not stop:
                raise ValueError(f"stop[{index}] is empty; an empty stop string would end every completion at once")
        return value

    @field_validator("quantization", "load_format")
    @classmethod
    def _vllm_option(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_vllm_option(info.field_name, value)

    @model_validator(mode="after")
    def _token_budget(self) -> InferenceConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.max_tokens >= self.max_model_len:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be smaller than max_model_len ({self.max_model_len}), "
                "which also has to hold the prompt"
            )
        return self
