"""Turn dataset rows into training examples: token IDs and labels with the loss mask applied.

Response-only training masks every token that is not part of an assistant turn (labels -100).
We compute the mask ourselves, from the chat template, instead of relying on a trainer option,
so the same pre-tokenised examples serve both backends (trl on CPU, unsloth on GPU) and the
mask is testable on its own.

How the assistant spans are found: for each assistant message *i*, the template rendering of
``messages[:i]`` with a generation prompt is a prefix of the full rendering, and the rendering of
``messages[:i+1]`` ends where that turn (including its end-of-turn token, so the model learns
to stop) ends. Templates that do not render prefixes consistently are reported, not guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

IGNORE_INDEX = -100


class TemplateError(ValueError):
    """The chat template does not allow locating assistant turns."""


def message_text(content: Any) -> str:
    """Content as a string (a list of text parts is concatenated)."""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)


def normalise_messages(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": message_text(m["content"])} for m in messages]


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True) if index else ""
        through = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if not full.startswith(before) or not full.startswith(through) or len(through) <= len(before):
            raise TemplateError(
                "the chat template does not render conversation prefixes consistently, so assistant turns "
                "cannot be located; set train_on_responses_only=False or choose another chat_template"
            )
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_conversation(tokenizer, messages: list[dict], responses_only: bool, max_length: int) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (−100 outside assistant turns when ``responses_only``)."""
    messages = normalise_messages(messages)
    if responses_only:
        text, spans = assistant_char_spans(tokenizer, messages)
    else:
        text, spans = tokenizer.apply_chat_template(messages, tokenize=False), []
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    if responses_only:
        labels = [
            token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
            for token, (begin, _) in zip(input_ids, encoded["offset_mapping"], strict=True)
        ]
    else:
        labels = list(input_ids)
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


def tokenize_text(tokenizer, text: str, max_length: int) -> dict[str, list[int]]:
    """A base-model example: BOS + text + EOS, every token trained."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    ids = ids[:max_length]
    return {"input_ids": ids, "labels": list(ids)}


def sft_examples(tokenizer, rows: Iterable[dict], responses_only: bool, max_length: int) -> list[dict[str, list[int]]]:
    """SFT examples from conversations rows (chat, text or preference rows, as OpenWeights accepts).

    Examples left without a single trained token (e.g. a prompt longer than ``max_length``)
    are dropped: they would only add zero-loss steps.
    """
    examples = []
    for row in rows:
        if "messages" in row:
            example = tokenize_conversation(tokenizer, row["messages"], responses_only, max_length)
        elif "text" in row:
            example = tokenize_text(tokenizer, row["text"], max_length)
        else:  # a preference row: train on the chosen answer
            example = tokenize_conversation(tokenizer, row["prompt"] + row["chosen"], responses_only, max_length)
        if any(label != IGNORE_INDEX for label in example["labels"]):
            examples.append(example)
    return examples


def preference_examples(rows: Iterable[dict]) -> list[dict[str, list[dict]]]:
    """Preference rows in trl's conversational format (content flattened to strings)."""
    return [
        {
            "prompt": normalise_messages(row["prompt"]),
            "chosen": normalise_messages(row["chosen"]),
            "rejected": normalise_messages(row["rejected"]),
        }
        for row in rows
    ]
