"""Prompt token IDs from a row, rendered the way the model was trained.

Every backend receives token IDs, not text, so the transformers and vLLM paths see exactly the
same prompt (a text prompt handed to vLLM would be tokenised again, with its own BOS rules).

- Chat: the tokenizer's chat template with the generation prompt, then the prefill (or the
  content of a final assistant message, which the model continues), tokenised without adding
  special tokens again (the template writes them).
- Text: BOS (when the tokenizer has one) + the text, as :func:`compute.training.examples.tokenize_text`
  trains base models, without the EOS that would end the sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compute.generation.rows import PromptRow


class ChatTemplateMissingError(ValueError):
    """Chat prompts for a tokenizer without a chat template."""


def encode_chat(
    tokenizer: Any, messages: Sequence[dict[str, str]], prefill: str = "", *, continue_final_message: bool = True
) -> list[int]:
    """Token IDs of a chat prompt, ending in the generation prompt and ``prefill``.

    With ``continue_final_message`` (the batch job's rule, as in OpenWeights) a final assistant
    message is continued instead: its content replaces ``prefill``. Without it (the OpenAI API's
    rule), a final assistant message is a finished turn and a new answer follows it.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateMissingError(
            "the model's tokenizer has no chat template, so chat ('messages') prompts cannot be rendered; "
            "send base-model prompts as {'text': ...} rows or /v1/completions requests"
        )
    messages = list(messages)
    if continue_final_message and messages and messages[-1]["role"] == "assistant":
        messages, prefill = messages[:-1], messages[-1]["content"]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(rendered + prefill, add_special_tokens=False)["input_ids"])


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token IDs of a base-model prompt: BOS (if the tokenizer has one) + the text."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


def encode_row(tokenizer: Any, row: PromptRow, prefill: str = "") -> list[int]:
    if row.messages is not None:
        return encode_chat(tokenizer, row.messages, prefill)
    return encode_text(tokenizer, row.text or "")
