"""OpenAI requests answered by one transformers generator: one request at a time, activity tracked.

The engine knows nothing of HTTP: it turns validated requests into prompts and sampling
settings, runs them under a lock (adapter selection is model state, and a CPU has nothing to
gain from interleaving), and returns OpenAI-shaped bodies or Server-Sent Events. Each request
start, streamed chunk and request end counts as activity, so an idle server can be stopped.

What one request may ask for is bounded (:class:`~compute.serving.protocol.RequestLimits`), checked
before any prompt is tokenized or generated. A caller that passes ``cancelled`` (an event it sets
when its client went away) gets :class:`GenerationCancelled` at the next generated token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from compute.generation.prompts import ChatTemplateMissingError, encode_chat, encode_text
from compute.generation.sampling import SamplingSettings
from compute.generation.transformers_backend import TransformersGenerator
from compute.serving.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    RequestLimits,
    chat_choice,
    new_id,
    now,
    text_choice,
    usage,
)

DONE = "data: [DONE]\n\n"
OWNER = "ow-prefect"


def sse(payload: dict[str, Any]) -> str:
    """One Server-Sent Event carrying a JSON payload."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class GenerationCancelled(Exception):
    """The request's ``cancelled`` event was set (its client went away); its generation stopped."""


class ServingEngine:
    """Serves ``base_model`` (adapters disabled) and each adapter the generator loaded, by name."""

    def __init__(
        self,
        generator: TransformersGenerator,
        base_model: str,
        *,
        limits: RequestLimits | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.generator = generator
        self.base_model = base_model
        self.limits = limits or RequestLimits()
        self._clock = clock
        self._lock = threading.Lock()  # one generation at a time
        self._count_lock = threading.Lock()
        self._in_flight = 0
        self.started_at = clock()
        self.last_activity = self.started_at

    # -- bookkeeping ----------------------------------------------------------------------------------

    def touch(self) -> None:
        """Record activity now."""
        self.last_activity = self._clock()

    @property
    def in_flight(self) -> int:
        """Requests generating or waiting for their turn; while any is, the server is not idle."""
        return self._in_flight

    def _count(self, change: int) -> None:
        with self._count_lock:
            self._in_flight += change

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        self._count(+1)
        try:
            self.touch()
            with self._lock:
                self.touch()
                yield
        finally:
            self.touch()
            self._count(-1)

    @contextlib.contextmanager
    def _stoppable(self, cancelled: threading.Event | None) -> Iterator[None]:
        """Raise :class:`GenerationCancelled` inside the generation once ``cancelled`` is set.

        The generator's batch call takes no stop signal; a forward pre-hook on the input embeddings
        runs once per generated token, so raising there ends ``generate()`` within one token.
        """
        if cancelled is None:
            yield
            return
        if cancelled.is_set():  # the client left while the request waited for its turn
            raise GenerationCancelled

        def stop_if_cancelled(_module: Any, _inputs: Any) -> None:
            if cancelled.is_set():
                raise GenerationCancelled

        hook = self.generator.model.get_input_embeddings().register_forward_pre_hook(stop_if_cancelled)
        try:
            yield
        finally:
            hook.remove()

    @property
    def model_names(self) -> list[str]:
        return [self.base_model, *self.generator.adapter_names]

    def models(self) -> dict[str, Any]:
        created = int(self.started_at)
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": OWNER,
                    "root": name,
                    "parent": None if name == self.base_model else self.base_model,
                    "max_model_len": self.generator.max_model_len,
                }
                for name in self.model_names
            ],
        }

    def _adapter_for(self, model: str) -> str | None:
        if model == self.base_model:
            return None
        if model in self.generator.adapter_names:
            return model
        raise APIError(
            404,
            f"The model `{model}` does not exist. Served models: {', '.join(self.model_names)}",
            param="model",
            code="model_not_found",
        )

    def _max_tokens(self, requested: int | None, prompt_tokens: int, param: str) -> int:
        """The request's max_tokens, or the context left after the prompt when it gives none (vLLM's rule)."""
        limit = self.generator.max_model_len
        room = limit - prompt_tokens
        if requested is None and room >= 1:
            return room
        if requested is not None and requested <= room:
            return requested
        wanted = prompt_tokens + (requested or 1)
        raise APIError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested {wanted} tokens "
            f"({prompt_tokens} in the {param}, {requested or 1} in the completion). "
            "Please reduce the length of the prompt or of the completion.",
            param=param,
            code="context_length_exceeded",
        )

    # -- chat completions -------------------------------------------------------------------------------

    def _chat_inputs(self, request: ChatCompletionRequest) -> tuple[list[int], SamplingSettings, str | None]:
        self.limits.check_work(request.n)  # before the template renders anything
        adapter = self._adapter_for(request.model)
        if request.stream and request.logprobs:
            raise APIError(
                400, "logprobs are not available when streaming from this server", param="logprobs"
            )
        messages = [message.plain() for message in request.messages]
        try:
            prompt = encode_chat(
                self.generator.tokenizer, messages, continue_final_message=request.continue_final_message
            )
        except ChatTemplateMissingError as exc:
            raise APIError(400, str(exc), param="messages") from None
        except Exception as exc:  # noqa: BLE001 - templates raise their own errors, e.g. "roles must alternate"
            raise APIError(
                400, f"the model's chat template cannot render these messages: {exc}", param="messages"
            ) from exc
        max_tokens = self._max_tokens(request.requested_max_tokens, len(prompt), "messages")
        self.limits.check_work(request.n, max_tokens)
        return prompt, request.sampling(max_tokens, request.top_k), adapter

    def chat(
        self, request: ChatCompletionRequest, cancelled: threading.Event | None = None
    ) -> dict[str, Any]:
        prompt, settings, adapter = self._chat_inputs(request)
        with self._busy(), self._stoppable(cancelled):
            samples = self.generator.generate([prompt], settings, adapter)[0]
        return {
            "id": new_id("chatcmpl"),
            "object": "chat.completion",
            "created": now(),
            "model": request.model,
            "choices": [chat_choice(index, sample) for index, sample in enumerate(samples)],
            "usage": usage(len(prompt), sum(len(sample.token_ids) for sample in samples)),
        }

    def chat_stream(self, request: ChatCompletionRequest) -> Iterator[str]:
        """Server-Sent Events of a chat completion; the request is checked before the first event."""
        prompt, settings, adapter = self._chat_inputs(request)
        header = {
            "id": new_id("chatcmpl"),
            "object": "chat.completion.chunk",
            "created": now(),
            "model": request.model,
        }
        if request.include_usage:
            header["usage"] = None

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            return sse({**header, "choices": choices, **extra})

        def events() -> Iterator[str]:
            with self._busy():
                generated = 0
                for index in range(request.n):
                    yield chunk(
                        [
                            {
                                "index": index,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ]
                    )
                    for piece in self.generator.stream(prompt, _choice_settings(settings, index), adapter):
                        self.touch()
                        if piece.finish_reason is None:
                            delta = {
                                "index": index,
                                "delta": {"content": piece.text},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                            yield chunk([delta])
                        else:
                            generated += piece.completion_tokens
                            yield chunk(
                                [
                                    {
                                        "index": index,
                                        "delta": {},
                                        "logprobs": None,
                                        "finish_reason": piece.finish_reason,
                                    }
                                ]
                            )
                if request.include_usage:
                    yield chunk([], usage=usage(len(prompt), generated))
                yield DONE

        return events()

    # -- text completions -------------------------------------------------------------------------------

    def _completion_inputs(
        self, request: CompletionRequest
    ) -> tuple[list[list[int]], SamplingSettings, str | None]:
        adapter = self._adapter_for(request.model)
        if request.stream and request.logprobs is not None:
            raise APIError(
                400, "logprobs are not available when streaming from this server", param="logprobs"
            )
        requested = request.prompts()
        self.limits.check_work(len(requested) * request.n)  # before any prompt is tokenized
        vocabulary = len(self.generator.tokenizer)
        prompts = []
        for prompt in requested:
            if isinstance(prompt, str):
                prompts.append(encode_text(self.generator.tokenizer, prompt))
            elif not prompt or any(not 0 <= token < vocabulary for token in prompt):
                raise APIError(
                    400,
                    f"token prompts must be non-empty lists of token IDs in [0, {vocabulary})",
                    param="prompt",
                )
            else:
                prompts.append(list(prompt))
        longest = max(len(prompt) for prompt in prompts)
        max_tokens = self._max_tokens(request.max_tokens, longest, "prompt")
        self.limits.check_work(len(prompts) * request.n, max_tokens)
        return prompts, request.sampling(max_tokens, request.logprobs), adapter

    def completion(
        self, request: CompletionRequest, cancelled: threading.Event | None = None
    ) -> dict[str, Any]:
        prompts, settings, adapter = self._completion_inputs(request)
        with self._busy(), self._stoppable(cancelled):
            results = self.generator.generate(prompts, settings, adapter)
        choices = [
            text_choice(number * settings.n + index, sample)
            for number, samples in enumerate(results)
            for index, sample in enumerate(samples)
        ]
        generated = sum(len(sample.token_ids) for samples in results for sample in samples)
        return {
            "id": new_id("cmpl"),
            "object": "text_completion",
            "created": now(),
            "model": request.model,
            "choices": choices,
            "usage": usage(sum(len(prompt) for prompt in prompts), generated),
        }

    def completion_stream(self, request: CompletionRequest) -> Iterator[str]:
        """Server-Sent Events of text completions (choice index = prompt number × n + sample number)."""
        prompts, settings, adapter = self._completion_inputs(request)
        header = {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": request.model}
        if request.include_usage:
            header["usage"] = None

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            return sse({**header, "choices": choices, **extra})

        def events() -> Iterator[str]:
            with self._busy():
                generated = 0
                for number, prompt in enumerate(prompts):
                    for sample in range(request.n):
                        index = number * request.n + sample
                        for piece in self.generator.stream(
                            prompt, _choice_settings(settings, index), adapter
                        ):
                            self.touch()
                            generated += piece.completion_tokens
                            choice = {
                                "index": index,
                                "text": piece.text,
                                "logprobs": None,
                                "finish_reason": piece.finish_reason,
                            }
                            yield chunk([choice])
                if request.include_usage:
                    yield chunk([], usage=usage(sum(len(prompt) for prompt in prompts), generated))
                yield DONE

        return events()


def _choice_settings(settings: SamplingSettings, index: int) -> SamplingSettings:
    """Streamed choices are generated one by one: give each its own seed so they differ, reproducibly."""
    if settings.seed is None:
        return settings
    return dataclasses.replace(settings, seed=settings.seed + index)
