"""Chat completions with OpenWeights' conveniences: a response cache for seeded requests, rate limits,
retries.

A request that carries a ``seed`` is deterministic enough to cache: its response is stored under
the SHA-256 of the whole request (model, messages and every sampling argument), and an identical
request is answered from disk without touching the server. Requests without a seed always go to
the server. :class:`RateLimiter` bounds requests per second and requests in flight.

A request that fails with a transient error (rate limited, no connection, a timeout, a 5xx) is
tried again after an exponential backoff with full jitter, as OpenWeights' ``openai_retry`` does
(:class:`Backoff`); each try resolves the model again, so a deployment that ended is replaced.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.identity import canonical_json

logger = logging.getLogger(__name__)


class RateLimiter:
    """At most ``requests_per_second`` starts per second and ``max_concurrent`` requests at once."""

    def __init__(self, requests_per_second: float | None = None, max_concurrent: int | None = None):
        self.interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._next_start = 0.0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrent) if max_concurrent else None

    def __enter__(self):
        if self._slots is not None:
            self._slots.acquire()
        if self.interval:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next_start)
                self._next_start = start + self.interval
            if start > now:
                time.sleep(start - now)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._slots is not None:
            self._slots.release()


class ResponseCache:
    """Responses of seeded requests, one JSON file per request digest."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @staticmethod
    def key(request: dict[str, Any]) -> str | None:
        if request.get("seed") is None:
            return None
        return hashlib.sha256(canonical_json(request)).hexdigest()

    def get(self, key: str) -> dict | None:
        path = self.directory / key[:2] / f"{key}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, key: str, response: dict) -> None:
        path = self.directory / key[:2] / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{threading.get_ident()}.tmp")
        temporary.write_text(json.dumps(response))
        temporary.replace(path)


class Backoff:
    """Retries of transient errors: up to ``max_tries`` tries, the n-th retry after a random wait of up
    to ``min(max_seconds, first_seconds * 2**(n-1))`` seconds (exponential backoff, full jitter)."""

    def __init__(self, max_tries: int = 10, first_seconds: float = 1.5, max_seconds: float = 60.0):
        if max_tries < 1:
            raise ValueError(f"max_tries must be at least 1, got {max_tries}")
        self.max_tries = max_tries
        self.first_seconds = first_seconds
        self.max_seconds = max_seconds

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        return random.random() * min(self.max_seconds, self.first_seconds * 2 ** (retry - 1))

    @staticmethod
    def is_transient(error: BaseException) -> bool:
        """Rate limits, lost connections, timeouts and server errors (5xx): worth another try."""
        import openai

        return isinstance(
            error, (openai.RateLimitError, openai.APIConnectionError, openai.InternalServerError)
        )


ClientResolver = Callable[[str], tuple[Any, str]]
"""model name → (an ``openai`` client for its server, the model name that server knows it by)."""


class ChatCompletions:
    """``ow.chat.completions``: ``create(model=…, messages=…, **openai_kwargs)`` routed by model name.

    ``kill(model)`` takes down the deployment ``create`` brought up on demand for ``model``."""

    def __init__(
        self,
        resolve: ClientResolver,
        cache: ResponseCache | None = None,
        limiter: RateLimiter | None = None,
        backoff: Backoff | None = None,
        kill: Callable[[str], None] | None = None,
    ):
        self._resolve = resolve
        self.cache = cache
        self.limiter = limiter or RateLimiter()
        self.backoff = backoff or Backoff()
        self._kill = kill

    def create(self, *, model: str, messages: list[dict], **kwargs: Any):
        from openai.types.chat import ChatCompletion

        request = {"model": model, "messages": messages, **kwargs}
        key = self.cache.key(request) if self.cache is not None and not kwargs.get("stream") else None
        if key is not None and (hit := self.cache.get(key)) is not None:
            return ChatCompletion.model_validate(hit)
        for attempt in range(1, self.backoff.max_tries + 1):
            try:
                client, served_name = self._resolve(model)
                with self.limiter:
                    response = client.chat.completions.create(model=served_name, messages=messages, **kwargs)
                break
            except Exception as error:
                if attempt == self.backoff.max_tries or not Backoff.is_transient(error):
                    raise
                delay = self.backoff.delay(attempt)
                logger.info(
                    "chat completion for %s failed (%s); try %d in %.1f s", model, error, attempt + 1, delay
                )
                time.sleep(delay)
        if key is not None:
            self.cache.put(key, response.model_dump(mode="json"))
        return response

    def kill(self, model: str) -> None:
        if self._kill is not None:
            self._kill(model)


class AsyncChatCompletions:
    """The async twin of :class:`ChatCompletions` (``resolve`` returns an ``openai.AsyncOpenAI``; it runs
    in a thread, as it may bring a deployment up)."""

    def __init__(
        self,
        resolve: ClientResolver,
        cache: ResponseCache | None = None,
        max_concurrent: int = 32,
        backoff: Backoff | None = None,
        kill: Callable[[str], None] | None = None,
    ):
        self._resolve = resolve
        self.cache = cache
        self._slots = asyncio.Semaphore(max_concurrent)
        self.backoff = backoff or Backoff()
        self._kill = kill

    async def create(self, *, model: str, messages: list[dict], **kwargs: Any):
        from openai.types.chat import ChatCompletion

        request = {"model": model, "messages": messages, **kwargs}
        key = self.cache.key(request) if self.cache is not None and not kwargs.get("stream") else None
        if key is not None and (hit := self.cache.get(key)) is not None:
            return ChatCompletion.model_validate(hit)
        for attempt in range(1, self.backoff.max_tries + 1):
            try:
                client, served_name = await asyncio.to_thread(self._resolve, model)
                async with self._slots:
                    response = await client.chat.completions.create(
                        model=served_name, messages=messages, **kwargs
                    )
                break
            except Exception as error:
                if attempt == self.backoff.max_tries or not Backoff.is_transient(error):
                    raise
                delay = self.backoff.delay(attempt)
                logger.info(
                    "chat completion for %s failed (%s); try %d in %.1f s", model, error, attempt + 1, delay
                )
                await asyncio.sleep(delay)
        if key is not None:
            self.cache.put(key, response.model_dump(mode="json"))
        return response

    async def kill(self, model: str) -> None:
        if self._kill is not None:
            await asyncio.to_thread(self._kill, model)
