"""The HTTP face of the transformers server: OpenAI's routes, bearer authentication, errors, SSE.

Routes: ``GET /health`` (no authentication, like vLLM's, so a supervisor can poll readiness),
``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``. Every other path
requires ``Authorization: Bearer <token>`` too; the token is compared in constant time and never
logged (the access log is off, and no handler logs headers).

What a client can make the server do is bounded:

- a body over ``max_body_bytes`` is answered 413 before the application reads it, and a request
  over the work limits 400, before anything is generated (:class:`RequestLimits`);
- an unexpected error is answered 500 with a request id only (also in ``x-request-id``); its
  text and traceback go to the server's log under that id, never to the client;
- a client that goes away stops its generation (streamed or not) at the next token;
- generation runs one request at a time on a worker thread of its own, so ``/health`` and
  ``/v1/models`` (answered on the event loop) stay quick however many requests wait.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.responses import StreamingResponse

from compute.serving.engine import GenerationCancelled, ServingEngine, sse
from compute.serving.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    RequestLimits,
    new_id,
)

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})  # the only paths answered without the token
REQUEST_ID_HEADER = b"x-request-id"
# A body over the limit is still read (and dropped) up to this size so that the client, which sends
# it all before it reads an answer, gets the 413; a bigger one is answered at once and the
# connection closed.
DRAIN_BYTES_MAX = 64 * 1024 * 1024
# Answered for a request whose client went away (nginx's "client closed request"); nobody reads it.
CLIENT_CLOSED_REQUEST = 499

T = TypeVar("T")


def token_matches(authorization: bytes | None, expected: bytes) -> bool:
    """Whether an ``Authorization`` header value carries the expected bearer token (constant-time comparison)."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(credentials.strip(), expected)


async def send_error(send, error: APIError, headers: dict[str, str] | None = None) -> None:
    """Answer an ASGI request with ``error`` in OpenAI's format."""
    response = JSONResponse(error.body(), status_code=error.status, headers=headers)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def request_id_of(scope: dict[str, Any]) -> str | None:
    """The id :class:`RequestGuard` gave this request."""
    return scope.get("state", {}).get("request_id")


class RequestGuard:
    """ASGI middleware, outermost: gives each request an id (``x-request-id``) and turns an exception
    that escaped the application into a 500 that says only that and the id; the exception is logged
    here, with its traceback, under that id."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_id("req")
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 - anything unexpected: logged in full, answered in general
            logger.exception("request %s (%s %s) failed", request_id, scope.get("method"), scope.get("path"))
            if not started:  # else the answer is under way: the connection just ends
                await send_error(send_with_id, internal_error(request_id))


def internal_error(request_id: str | None) -> APIError:
    """The 500 a client sees for any unexpected error: no exception text, the request id to report."""
    return APIError(
        500,
        f"The server had an error while processing your request (request id {request_id}). "
        "Retry, or report the request id to the operator of this server.",
        type="server_error",
    )


class BearerAuthentication:
    """ASGI middleware: requests without the right bearer token get a 401 in OpenAI's format, on every
    path but ``open_paths``. ``on_authenticated`` is called for each request that carries the token."""

    def __init__(
        self,
        app: Any,
        *,
        token: str,
        on_authenticated: Callable[[], None] | None = None,
        open_paths: Collection[str] = OPEN_PATHS,
    ):
        self.app = app
        self._token = token.encode("utf-8")
        self._on_authenticated = on_authenticated
        self._open_paths = frozenset(open_paths)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in self._open_paths and scope["method"] != "OPTIONS":
            headers = dict(scope["headers"])  # ASGI header names are lower-case bytes
            if not token_matches(headers.get(b"authorization"), self._token):
                error = APIError(
                    401,
                    "Missing or invalid API key: send 'Authorization: Bearer <token>'.",
                    code="invalid_api_key",
                )
                await send_error(send, error, headers={"WWW-Authenticate": "Bearer"})
                return
            if self._on_authenticated is not None:
                self._on_authenticated()
        await self.app(scope, receive, send)


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 naming the limit before the
    application sees any of it; a body within it is read whole and handed on, and after it the
    application's ``receive`` reports the client's disconnect as usual."""

    def __init__(self, app: Any, *, limits: RequestLimits):
        self.app = app
        self._limits = limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limits.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            size = int(declared) if declared.isdigit() else None
            if size is not None and size <= DRAIN_BYTES_MAX:
                await _drain(receive)
            await send_error(send, self._limits.body_too_large(size), headers={"Connection": "close"})
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before it finished sending: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # a body without a length (chunked) that grew too big
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_BYTES_MAX - size)
                await send_error(send, self._limits.body_too_large(), headers={"Connection": "close"})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _drain(receive, budget: int = DRAIN_BYTES_MAX) -> None:
    """Read and drop the rest of a body, up to ``budget`` bytes."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def wait_for_disconnect(receive) -> None:
    """Return once the client has gone (call after the body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class GenerationSlot:
    """One generation at a time, on one worker thread of its own.

    Requests wait here, on the event loop, for their turn, instead of each holding a thread of the
    shared pool while they wait for the engine: the pool (and ``/health``) stays free, and a stream
    between two chunks always gets its thread back. A stream keeps the slot until it ends.
    """

    def __init__(self) -> None:
        self.turn = anyio.Semaphore(1)  # not a Lock: a stream releases it from another task
        self.thread = anyio.CapacityLimiter(1)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the slot's thread (the caller holds the turn)."""
        return await anyio.to_thread.run_sync(function, *args, limiter=self.thread)


def build_app(engine: ServingEngine, api_key: str, limits: RequestLimits | None = None):
    """The FastAPI application serving ``engine``, guarded by ``api_key``; bodies are bounded by
    ``limits`` (default: the engine's)."""
    limits = limits or engine.limits
    app = FastAPI(title="OpenAI-compatible model server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodySizeLimit, limits=limits)
    app.add_middleware(BearerAuthentication, token=api_key, on_authenticated=engine.touch)
    app.add_middleware(RequestGuard)  # added last: outermost
    slots: list[GenerationSlot] = []  # made on the server's event loop, at the first request

    def slot() -> GenerationSlot:
        if not slots:
            slots.append(GenerationSlot())
        return slots[0]

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

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return engine.models()

    async def answer(request: Request, generate: Callable[[Any, threading.Event], dict[str, Any]], body: Any):
        """``generate(body, cancelled)`` in its turn; ``cancelled`` is set, and the wait for a turn
        ends, when the client goes away."""
        cancelled = threading.Event()
        result: dict[str, Any] | Exception | None = None

        def run() -> dict[str, Any] | Exception | None:
            # Returned, not raised: raised inside the task group, it would come out as an ExceptionGroup.
            try:
                return generate(body, cancelled)
            except GenerationCancelled:
                return None
            except Exception as exc:  # noqa: BLE001 - raised again below
                return exc

        async with anyio.create_task_group() as group:

            async def watch() -> None:
                await wait_for_disconnect(request.receive)
                cancelled.set()
                group.cancel_scope.cancel()  # a request still waiting for its turn stops waiting

            group.start_soon(watch)
            async with slot().turn:
                result = await slot().run(run)  # not abandoned: it ends at the next token once cancelled
            group.cancel_scope.cancel()
        if isinstance(result, Exception):
            raise result
        if result is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return result

    async def stream(request: Request, start: Callable[[Any], Iterator[str]], body: Any):
        """Checks the request in its turn, then streams; the stream keeps the turn until it ends."""
        turn = slot().turn
        await turn.acquire()
        try:
            events = await slot().run(start, body)
        except BaseException:
            turn.release()
            raise
        return EventStream(events, slot(), request_id_of(request.scope))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        if body.stream:
            return await stream(request, engine.chat_stream, body)
        return await answer(request, engine.chat, body)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        if body.stream:
            return await stream(request, engine.completion_stream, body)
        return await answer(request, engine.completion, body)

    return app


class EventStream(StreamingResponse):
    """Server-Sent Events pulled from the engine's blocking iterator on the slot's thread.

    However the response ends (finished, client gone, error), the iterator is closed, which stops
    generation and releases the engine's lock, and then the slot's turn is released: done here,
    around the whole response, because a client that is gone before the first event means the
    body is never iterated at all.
    """

    def __init__(self, events: Iterator[str], slot: GenerationSlot, request_id: str | None):
        super().__init__(self._events(events, slot, request_id), media_type="text/event-stream")
        self._engine_events = events
        self._slot = slot

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._slot.run(self._engine_events.close)
                finally:
                    self._slot.turn.release()

    @staticmethod
    async def _events(
        events: Iterator[str], slot: GenerationSlot, request_id: str | None
    ) -> AsyncIterator[str]:
        finished = object()
        try:
            while True:
                event = await slot.run(next, events, finished)
                if event is finished:
                    return
                yield event
        except Exception:  # noqa: BLE001 - the status line is sent already; report in the stream
            logger.exception("request %s failed while streaming", request_id)
            yield sse(internal_error(request_id).body())
