"""Parameters of log-probability jobs (``inference/logprobs``), at parity with OpenWeights' ``logprob`` job.

OpenWeights' ``LogProbJobModel`` has ``model``, ``dataset`` and ``batch_size``; the differences are
deliberate and listed here:

- ``input_file`` (OpenWeights: ``dataset``; the client accepts both spellings) is a conversations
  file ID; every row is ``{"messages": [...]}`` with at least one assistant turn, checked line by
  line in the control tier (:func:`check_logprobs_row`), before any GPU;
- ``model`` may be any model reference (:mod:`jobs.model_refs`); a LoRA adapter is scored on top of
  the base model it names;
- ``max_model_len`` bounds a conversation's tokens: a longer one is refused, naming its line, instead
  of being cut (a cut conversation would report the log-probability of a different text);
- the output is one row per input row with the log-probability of every assistant token and the
  total per assistant message (:mod:`compute.logprobs.runner`), not OpenWeights' content blocks.

Pure pydantic (no torch): imported by the control tier and the Prefect UI form.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator

from jobs.datasets import RowError, check_message_list
from jobs.file_ids import FileId, parse_file_id
from jobs.hardware import AllowedHardware, ContainerImage, HardwareRequest, RequiredVramGb
from jobs.identity import JobIdSuffix
from jobs.inference import INPUT_PURPOSES, check_model_reference


def check_logprobs_row(row: Any) -> None:
    """Raise :class:`RowError` unless ``row`` is a chat with at least one assistant turn to score."""
    if not isinstance(row, dict):
        raise RowError(f"each line must be a JSON object, got {type(row).__name__}")
    if "messages" not in row:
        if "text" in row:
            raise RowError("a 'text' row has no assistant turn to score; a logprobs row needs 'messages' with one")
        raise RowError("a logprobs row needs 'messages': a chat with at least one assistant turn")
    check_message_list(row["messages"], "messages")
    if not any(message.get("role") == "assistant" for message in row["messages"]):
        raise RowError("messages has no assistant turn, so there is nothing to score")


class LogprobsConfig(HardwareRequest):
    """The log-probability of every assistant token of every row of a conversations file, under one model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="Model to score with: a Hugging Face model ID, a local path, a fine-tuning job ID (ftjob-…) "
        "or an artifact URI. A LoRA adapter is loaded on top of the base model it names.",
    )
    input_file: FileId = Field(
        description="File ID of the conversations (conversations:file-…): one {'messages': [...]} object per line, "
        "each with at least one assistant turn.",
    )
    batch_size: int = Field(8, ge=1, le=1024, description="Conversations scored per forward pass.")
    max_model_len: int = Field(
        8192,
        ge=16,
        le=1_048_576,
        description="Longest conversation, in tokens, the model is run with; a longer row is refused, naming its line.",
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
                "upload the conversations with purpose 'conversations'"
            )
        return value
