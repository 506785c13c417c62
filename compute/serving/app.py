"""The HTTP face of the transformers server: OpenAI's routes, bearer authentication, errors, SSE.

Routes: ``GET /health`` (no authentication, like vLLM's, so a supervisor can poll readiness),
``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``. Every ``/v1`` path
requires ``Authorization: Bearer <token>``; the token is compared in constant time and never
logged (the access log is off, and no handler logs headers).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from compute.serving.engine import ServingEngine, sse
from compute.serving.protocol import APIError, ChatCompletionRequest, CompletionRequest

logger = logging.getLogger(__name__)


def token_matches(authorization: bytes | None, expected: bytes) -> bool:
    """Whether an ``Authorization`` header value carries the expected bearer token (constant-time comparison)."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(credentials.strip(), expected)


class BearerAuthentication:
    """ASGI middleware: ``/v1`` requests without the right bearer token get a 401 in OpenAI's format."""

    def __init__(self, app: Any, *, token: str, on_authenticated: Callable[[], None]):
        self.app = app
        self._token = token.encode("utf-8")
        self._on_authenticated = on_authenticated

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1") and scope["method"] != "OPTIONS":
            headers = dict(scope["headers"])  # ASGI header names are lower-case bytes
            if not token_matches(headers.get(b"authorization"), self._token):
                from fastapi.responses import JSONResponse

                error = APIError(
                    401,
                    "Missing or invalid API key: send 'Authorization: Bearer <token>'.",
                    code="invalid_api_key",
                )
                response = JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
            self._on_authenticated()
        await self.app(scope, receive, send)


def build_app(engine: ServingEngine, api_key: str):
    """The FastAPI application serving ``engine``, guarded by ``api_key``."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="OpenAI-compatible model server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BearerAuthentication, token=api_key, on_authenticated=engine.touch)

    @app.exception_handler(APIError)
    async def api_error(_request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, exc: RequestValidationError):
        problems, param = [], None
        for error in exc.errors():
            location = [str(part) for part in error.get("loc", ()) if part != "body"]
            param = param or (location[0] if location else None)
            message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            problems.append(f"{'.'.join(location)}: {message}" if location else message)
        return JSONResponse(APIError(400, "; ".join(problems), param=param).body(), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(_request, exc: Exception):
        logger.exception("request failed")
        return JSONResponse(APIError(500, f"internal error: {exc}", type="server_error").body(), status_code=500)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return engine.models()

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatCompletionRequest):
        if request.stream:
            return StreamingResponse(_async_events(engine.chat_stream(request)), media_type="text/event-stream")
        return engine.chat(request)

    @app.post("/v1/completions")
    def completions(request: CompletionRequest):
        if request.stream:
            return StreamingResponse(_async_events(engine.completion_stream(request)), media_type="text/event-stream")
        return engine.completion(request)

    return app


async def _async_events(events: Iterator[str]) -> AsyncIterator[str]:
    """Pull a blocking event iterator from worker threads; always close it, even when the client went away.

    Closing the engine's iterator stops generation and releases the engine's lock; leaving that to
    the garbage collector could keep every later request waiting.
    """
    import anyio

    finished = object()
    try:
        while True:
            event = await anyio.to_thread.run_sync(next, events, finished)
            if event is finished:
                return
            yield event
    except Exception as exc:  # noqa: BLE001 - the status line is sent already; report in the stream
        logger.exception("streaming failed")
        yield sse(APIError(500, f"generation failed: {exc}", type="server_error").body())
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(events.close)
