"""A conversation as token IDs, and which tokens belong to each assistant turn.

The rule is response-only training's (:func:`compute.training.examples.assistant_char_spans`): a
turn runs from the end of the generation prompt that precedes it to the end of its own rendering,
so it holds the message's content and the template's end-of-turn token. A token belongs to the turn
its first character falls in. The log-probability of a turn is then the probability that the model
writes exactly that answer and ends it there, and summed over a file it is the negative of the SFT
loss on the same rows.

The first token of a sequence has no log-probability (nothing precedes it): a turn that opens the
conversation starts at the second token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compute.training.examples import assistant_char_spans, normalise_messages


@dataclass(frozen=True)
class AssistantTurn:
    """The tokens ``[start, end)`` of the assistant message ``message`` (its index in the row)."""

    message: int
    start: int
    end: int


@dataclass(frozen=True)
class TokenizedConversation:
    input_ids: list[int]
    turns: list[AssistantTurn]


def tokenize_conversation(tokenizer: Any, messages: Sequence[dict]) -> TokenizedConversation:
    """Token IDs of the rendered conversation and the token range of each assistant turn.

    ``messages`` may carry content as text parts; a template that does not render conversation
    prefixes consistently raises :class:`compute.training.examples.TemplateError`.
    """
    messages = normalise_messages(list(messages))
    text, char_spans = assistant_char_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    starts = [begin for begin, _ in encoded["offset_mapping"]]
    assistant_indices = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    turns = []
    for message, (first_char, end_char) in zip(assistant_indices, char_spans, strict=True):
        positions = [position for position, begin in enumerate(starts) if first_char <= begin < end_char and position > 0]
        start = positions[0] if positions else max(1, _first_at_or_after(starts, end_char))
        turns.append(AssistantTurn(message, start, positions[-1] + 1 if positions else start))
    return TokenizedConversation(input_ids, turns)


def _first_at_or_after(starts: list[int], char: int) -> int:
    return next((position for position, begin in enumerate(starts) if begin >= char), len(starts))
