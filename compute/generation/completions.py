"""What a backend returns for one sampled sequence, and the stop-string rules every backend shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class TopLogprob:
    token: str
    token_id: int
    logprob: float

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "token_id": self.token_id, "logprob": self.logprob}


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token, its log-probability under the model, and the most likely alternatives."""

    token: str
    token_id: int
    logprob: float
    top_logprobs: tuple[TopLogprob, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "token_id": self.token_id,
            "logprob": self.logprob,
            "top_logprobs": [top.to_json() for top in self.top_logprobs],
        }


@dataclass(frozen=True)
class Completion:
    """One sampled continuation of a prompt.

    ``token_ids`` are the tokens the model generated for it (an end-of-sequence token included,
    tokens after a stop string excluded): what tokens/s and usage counts are computed from.
    ``text`` is their decoding without special tokens, cut before the first stop string.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    logprobs: tuple[TokenLogprob, ...] | None = None

    def logprobs_json(self) -> list[dict[str, Any]] | None:
        return None if self.logprobs is None else [entry.to_json() for entry in self.logprobs]


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts in ``text``, or None."""
    found = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return min(found) if found else None


def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string.

    A streaming server must not send them yet: the next token may complete the stop string,
    and a stop string is never part of a completion.
    """
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
