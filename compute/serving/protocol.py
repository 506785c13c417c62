"""The subset of OpenAI's HTTP API the transformers server speaks: request models, error bodies, response shapes.

Requests are validated here, so a bad request is answered with a 400 in OpenAI's error format
(``{"error": {"message", "type", "param", "code"}}``) before any generation starts. Fields the
official clients send but this server cannot honour (penalties, logit bias, tools, structured
output) are refused when set to a value that would change the result: silently ignoring them
would give a wrong answer, not a degraded one. Other unknown fields are ignored, as
OpenAI-compatible servers commonly do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compute.generation.completions import Completion, TokenLogprob
from compute.generation.sampling import SamplingSettings

MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 128


class APIError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class RequestLimits:
    """How much one request may ask of the server, checked before any generation starts.

    A request over a limit is refused naming the limit: 413 for the body, 400 for the work.
    The defaults fit what one GPU answers in one request; a deployment may set its own.
    """

    max_body_bytes: int = 8 * 1024 * 1024
    max_sequences: int = 256  # completions in one request: prompts × n
    max_generated_tokens: int = 524_288  # prompts × n × max_tokens

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_sequences", "max_generated_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def check_work(self, sequences: int, max_tokens: int | None = None) -> None:
        """Refuse (APIError 400) ``sequences`` completions of up to ``max_tokens`` tokens each when
        they exceed :attr:`max_sequences` or :attr:`max_generated_tokens`."""
        if sequences > self.max_sequences:
            raise APIError(
                400,
                f"This request asks for {sequences} completions (prompts × n); this server generates at most "
                f"{self.max_sequences} per request (max_sequences). Send fewer prompts or a smaller n.",
                param="n",
                code="too_many_completions",
            )
        if max_tokens is not None and sequences * max_tokens > self.max_generated_tokens:
            raise APIError(
                400,
                f"This request asks for up to {sequences * max_tokens} generated tokens ({sequences} completions × "
                f"max_tokens {max_tokens}); this server generates at most {self.max_generated_tokens} per request "
                "(max_generated_tokens). Lower max_tokens or n, or send fewer prompts.",
                param="max_tokens",
                code="too_many_tokens",
            )

    def body_too_large(self, size: int | None = None) -> APIError:
        """The 413 for a body over :attr:`max_body_bytes` (``size`` when it is known)."""
        what = f"{size} bytes" if size is not None else "larger"
        return APIError(
            413,
            f"The request body is {what}; this server accepts at most {self.max_body_bytes} bytes (max_body_bytes).",
            code="request_too_large",
        )


def requested_work(payload: Any, *, chat: bool) -> tuple[int, int | None]:
    """``(completions, max_tokens)`` a raw completion or chat request body asks for, read without
    validating it (the server behind validates): what :meth:`RequestLimits.check_work` takes. A
    malformed field counts as one completion and no token limit; validation refuses it later."""
    if not isinstance(payload, Mapping):
        return 1, None
    n = payload.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    prompts = 1
    prompt = payload.get("prompt")
    if not chat and isinstance(prompt, list) and prompt and not all(isinstance(item, int) for item in prompt):
        prompts = len(prompt)  # a list of strings or of token lists: one completion set per prompt
    limit = payload.get("max_completion_tokens") if chat else None
    limit = limit if limit is not None else payload.get("max_tokens")
    max_tokens = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
    return prompts * choices, max_tokens


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = "text"
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def plain(self) -> dict[str, str]:
        """The message as the chat template expects it: system/user/assistant and string content."""
        if self.content is None:
            text = ""
        elif isinstance(self.content, str):
            text = self.content
        else:
            text = "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """Fields chat and text completions share."""

    model_config = ConfigDict(extra="allow")  # kept only to refuse features that would change the answer

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    min_tokens: int = Field(0, ge=0)  # vLLM's extension
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if any(not stop for stop in stops):
            raise ValueError("stop strings must not be empty")
        if len(stops) > 16:
            raise ValueError("at most 16 stop strings")
        return stops

    @model_validator(mode="after")
    def _unsupported(self):
        for field in ("presence_penalty", "frequency_penalty"):
            if getattr(self, field):
                raise ValueError(f"{field} is not supported by this server; leave it at 0")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by this server")
        extra = self.model_extra or {}
        for field in (
            "tools",
            "functions",
            "guided_json",
            "guided_regex",
            "guided_choice",
            "structured_outputs",
        ):
            if extra.get(field):
                raise ValueError(f"{field} is not supported by this server")
        response_format = extra.get("response_format")
        if response_format and (
            not isinstance(response_format, dict) or response_format.get("type", "text") != "text"
        ):
            raise ValueError("response_format other than {'type': 'text'} is not supported by this server")
        return self

    def sampling(self, max_tokens: int, logprobs: int | None) -> SamplingSettings:
        try:
            return SamplingSettings(
                max_tokens=max_tokens,
                min_tokens=min(self.min_tokens, max_tokens),
                temperature=1.0 if self.temperature is None else self.temperature,
                top_p=1.0 if self.top_p is None else self.top_p,
                stop=tuple(self.stop or ()),
                n=1 if self.stream else self.n,  # streams generate their choices one at a time
                logprobs=logprobs,
                seed=self.seed,
            )
        except ValueError as exc:
            raise APIError(400, str(exc)) from None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    continue_final_message: bool = False  # vLLM's extension: continue the last (assistant) message

    @model_validator(mode="after")
    def _consistent(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("continue_final_message needs the last message to be from the assistant")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def top_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _supported(self):
        if self.echo:
            raise ValueError("echo is not supported by this server")
        if self.suffix:
            raise ValueError("suffix is not supported by this server")
        if self.best_of not in (None, 1, self.n):
            raise ValueError("best_of is not supported by this server")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts: each a string or a list of token IDs."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(item, int) for item in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]


# -- responses --------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def token_bytes(token: str) -> list[int] | None:
    """The token's UTF-8 bytes; unknown (None) for a token that is part of a multi-byte character."""
    return None if "\ufffd" in token else list(token.encode("utf-8"))


def chat_logprobs(entries: tuple[TokenLogprob, ...] | None) -> dict[str, Any] | None:
    if entries is None:
        return None
    return {
        "content": [
            {
                "token": entry.token,
                "logprob": entry.logprob,
                "bytes": token_bytes(entry.token),
                "top_logprobs": [
                    {"token": top.token, "logprob": top.logprob, "bytes": token_bytes(top.token)}
                    for top in entry.top_logprobs
                ],
            }
            for entry in entries
        ]
    }


def text_logprobs(entries: tuple[TokenLogprob, ...] | None) -> dict[str, Any] | None:
    if entries is None:
        return None
    offsets, position = [], 0
    for entry in entries:
        offsets.append(position)
        position += len(entry.token)
    return {
        "tokens": [entry.token for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [{top.token: top.logprob for top in entry.top_logprobs} for entry in entries],
        "text_offset": offsets,
    }


def chat_choice(index: int, completion: Completion) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": completion.text},
        "finish_reason": completion.finish_reason,
        "logprobs": chat_logprobs(completion.logprobs),
    }


def text_choice(index: int, completion: Completion) -> dict[str, Any]:
    return {
        "index": index,
        "text": completion.text,
        "finish_reason": completion.finish_reason,
        "logprobs": text_logprobs(completion.logprobs),
    }
