"""Hooks into transformers' ``generate()`` loop: log-probabilities, cancellation, token streaming, seeding.

They follow transformers' duck-typed protocols (a logits processor and a stopping criterion are
callables on ``(input_ids, scores)``, a streamer has ``put``/``end``), so torch is imported only
when they run.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from compute.generation.completions import TokenLogprob, TopLogprob


@contextlib.contextmanager
def seeded(seed: int | None, device: str) -> Iterator[None]:
    """Seed sampling for this call only (the global RNG state is restored afterwards)."""
    if seed is None:
        yield
        return
    import torch

    devices = [torch.cuda.current_device()] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class LogprobRecorder:
    """A logits processor that records log-probabilities of the raw logits, step by step.

    At each step it keeps the top-k alternatives and the log-probability vector; the token
    chosen from that vector is only known at the next step (the last of ``input_ids``), or at
    the end (:meth:`finish`). So it holds one ``batch × vocab`` tensor, not one per step.
    """

    def __init__(self, top_k: int):
        self.top_k = top_k
        self.chosen: list[Any] = []  # per step: (batch,) log-probability of the chosen token
        self.top: list[tuple[Any, Any]] = []  # per step: (values, ids), each (batch, k)
        self._last = None

    def __call__(self, input_ids, scores):
        import torch

        logprobs = torch.log_softmax(scores.float(), dim=-1)
        if self._last is not None:
            self.chosen.append(self._last.gather(1, input_ids[:, -1:]).squeeze(1).cpu())
        if self.top_k:
            values, ids = logprobs.topk(self.top_k, dim=-1)
            self.top.append((values.cpu(), ids.cpu()))
        self._last = logprobs
        return scores

    def finish(self, last_tokens) -> None:
        if self._last is not None:
            self.chosen.append(self._last.gather(1, last_tokens[:, None]).squeeze(1).cpu())
            self._last = None

    def entries(self, row: int, tokens: Sequence[int], decode) -> tuple[TokenLogprob, ...]:
        entries = []
        for step, token in enumerate(tokens):
            alternatives: tuple[TopLogprob, ...] = ()
            if self.top_k:
                values, ids = self.top[step]
                alternatives = tuple(
                    TopLogprob(decode(int(alt)), int(alt), float(value))
                    for value, alt in zip(values[row].tolist(), ids[row].tolist(), strict=True)
                )
            entries.append(TokenLogprob(decode(token), token, float(self.chosen[step][row]), alternatives))
        return tuple(entries)


class StopWhenSet:
    """A stopping criterion: stop every sequence once ``event`` is set (the consumer went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TokenQueue:
    """A transformers streamer that hands generated token IDs to another thread."""

    _END = object()

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._prompt_seen = False
        self._error: BaseException | None = None

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first sends the prompt
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self._queue.put(token)

    def end(self) -> None:
        self._queue.put(self._END)

    def fail(self, error: BaseException) -> None:
        self._error = error

    def __iter__(self) -> Iterator[int]:
        while True:
            item = self._queue.get()
            if item is self._END:
                if self._error is not None:
                    raise self._error
                return
            yield item
