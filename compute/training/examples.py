"""Turn dataset rows into training examples: token IDs and labels with the loss mask applied.

Response-only training masks every token that is not part of an assistant turn (labels -100).
We compute the mask ourselves, from the chat template, instead of relying on a trainer option,
so the same pre-tokenised examples serve both backends (trl on CPU, unsloth on GPU) and the
mask is testable on its own.

How the assistant spans are found: for each assistant message *i*, the template rendering of
``messages[:i]`` with a generation prompt is a prefix of the full rendering, and the rendering of
``messages[:i+1]`` ends where that turn (including its end-of-turn token, so the model learns
to stop) ends. Templates that do not render prefixes consistently are reported, not guessed.

Weighted SFT (:func:`weighted_examples`) adds ``token_weights`` beside the labels: each token
carries the weight of the message or content block its text came from (see
:func:`weighted_char_spans`), template scaffolding weighs 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jobs.datasets import weighted_blocks

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


def weighted_char_spans(tokenizer, messages: list[dict], responses_only: bool) -> tuple[str, list[tuple[int, int, float]], list[tuple[int, float]]]:
    """The rendered conversation, the ``(start, end, weight)`` character span of every weighted block,
    and the ``(position, weight)`` where each assistant turn's end-of-turn token starts.

    How a message's text is found: the conversation is rendered once more with that message's
    content empty; the two renderings differ exactly where the content went (a template that trims
    the content is allowed). Its blocks follow one another inside it. The end-of-turn token (e.g.
    ``<|eot_id|>``) weighs what the turn's last block weighs, so the model learns to stop where it
    should (or not to). Messages whose blocks all weigh 0 are not located: 0 is every token's default.
    """
    blocks = [weighted_blocks(message, responses_only) for message in messages]
    flat = [{"role": m["role"], "content": "".join(text for text, _ in b)} for m, b in zip(messages, blocks, strict=True)]
    full = tokenizer.apply_chat_template(flat, tokenize=False)
    spans: list[tuple[int, int, float]] = []
    turn_ends: list[tuple[int, float]] = []
    for index, message_blocks in enumerate(blocks):
        if not any(weight for _, weight in message_blocks):
            continue
        emptied = flat[:index] + [{**flat[index], "content": ""}] + flat[index + 1 :]
        located = _locate_inserted(full, tokenizer.apply_chat_template(emptied, tokenize=False), flat[index]["content"])
        if located is None:
            continue  # no text to train (empty or whitespace the template trims)
        start, dropped, length = located
        offset, last_weight = -dropped, None
        for text, weight in message_blocks:
            begin, end = max(start + offset, start), min(start + offset + len(text), start + length)
            offset += len(text)
            if begin < end:
                spans.append((begin, end, weight))
                last_weight = weight
        if flat[index]["role"] == "assistant" and last_weight is not None:
            turn_ends.append((start + length, last_weight))
    return full, spans, turn_ends


def _locate_inserted(full: str, emptied: str, content: str) -> tuple[int, int, int] | None:
    """``(start in full, leading characters the template dropped, rendered length)`` of ``content``."""
    limit = min(len(full), len(emptied))
    prefix = next((i for i in range(limit) if full[i] != emptied[i]), limit)
    suffix = next((i for i in range(limit) if full[-1 - i] != emptied[-1 - i]), limit)
    # Wherever the content went, it lies between the first and the last difference of the two renderings.
    low, high = max(0, len(emptied) - suffix), min(len(full), prefix + len(full) - len(emptied))
    for rendered, dropped in ((content, 0), (content.strip(), len(content) - len(content.lstrip()))):
        if not rendered:
            return None
        start = full.rfind(rendered, low, high)
        if start >= 0:
            return start, dropped, len(rendered)
    raise TemplateError(
        "the chat template changes message text (beyond trimming whitespace), so weighted blocks cannot be "
        "located; choose another chat_template"
    )


def tokenize_weighted_conversation(tokenizer, messages: list[dict], responses_only: bool, max_length: int) -> dict[str, list]:
    """``input_ids``, ``labels`` (−100 where the weight is 0) and ``token_weights`` of a weighted chat.

    A token takes the weight of the block its first character belongs to; template text weighs 0.
    """
    text, spans, turn_ends = weighted_char_spans(tokenizer, messages, responses_only)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    starts = [begin for begin, _ in encoded["offset_mapping"]]
    weights = [next((weight for start, end, weight in spans if start <= begin < end), 0.0) for begin in starts]
    special = {token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}
    for position, weight in turn_ends:
        if position in starts and input_ids[starts.index(position)] in special:
            weights[starts.index(position)] = weight
    labels = [token if weight else IGNORE_INDEX for token, weight in zip(input_ids, weights, strict=True)]
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length], "token_weights": weights[:max_length]}


def weighted_examples(tokenizer, rows: Iterable[dict], responses_only: bool, max_length: int) -> list[dict[str, list]]:
    """Weighted-SFT examples from chat rows; those left without a non-zero weight (truncated) are dropped."""
    examples = []
    for row in rows:
        example = tokenize_weighted_conversation(tokenizer, row["messages"], responses_only, max_length)
        if any(example["token_weights"]):
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
