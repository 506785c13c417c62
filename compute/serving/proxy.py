"""The bearer-token proxy in front of ``vllm serve``: the only way to vLLM from outside its machine.

vLLM checks its ``VLLM_API_KEY`` only on ``/v1/*``; ``/invocations`` (completions), ``/tokenize``,
``/pooling``, ``/metrics`` and more answer anyone who reaches its port. So vLLM listens on loopback
(:data:`~compute.serving.vllm_command.VLLM_HOST`) and this proxy listens on the published port. It
applies what the transformers server applies (:mod:`compute.serving.app`, the same middleware):

- the bearer token on every path but ``/health`` (checked before a body is read);
- the body bound (413) and, for generation routes, the work bound (400): prompts × ``n`` and
  completions × ``max_tokens`` (:class:`~compute.serving.protocol.RequestLimits`);
- only :data:`FORWARDED_ROUTES`, the routes our own server answers; anything else is a 404 and
  never reaches vLLM. The upstream URL is built from the matched route, never from the raw path;
- a 5xx from vLLM reaches the client as a generic 500 with a request id; vLLM's text is logged;
- a client that goes away closes the upstream request, which makes vLLM abort its generation.

The proxy passes the client's ``Authorization`` header on, so vLLM's own key check still applies.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import httpx

from compute.serving.app import (
    BearerAuthentication,
    BodySizeLimit,
    RequestGuard,
    internal_error,
    request_id_of,
    send_error,
    wait_for_disconnect,
)
from compute.serving.protocol import APIError, RequestLimits, requested_work
from compute.serving.server import BackgroundHTTPServer

logger = logging.getLogger(__name__)

# (method, path) → whether the route generates (its body is checked against the work limits)
FORWARDED_ROUTES: dict[tuple[str, str], bool] = {
    ("GET", "/health"): False,
    ("GET", "/v1/models"): False,
    ("POST", "/v1/chat/completions"): True,
    ("POST", "/v1/completions"): True,
}
_CHAT_PATH = "/v1/chat/completions"
# Connection-level headers (RFC 9110 §7.6.1) and those the proxy sets itself: never passed on.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
_UPSTREAM_ERROR_BYTES = 64 * 1024  # of a vLLM error body, kept for the log
# Generation may take minutes before the first byte of an unstreamed answer: no read timeout.
_UPSTREAM_TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None)


class ProxyApplication:
    """The ASGI application behind the middleware: forwards the allowed routes to ``upstream``."""

    def __init__(self, upstream: str, limits: RequestLimits):
        self.upstream = upstream.rstrip("/")
        self.limits = limits
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        route = (scope["method"], scope["path"])
        if route not in FORWARDED_ROUTES:
            await send_error(
                send, APIError(404, f"{scope['method']} {scope['path']} is not served here", code="not_found")
            )
            return
        body = await _read_body(receive)
        if FORWARDED_ROUTES[route]:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None  # vLLM refuses it with its own message
            try:
                self.limits.check_work(*requested_work(payload, chat=scope["path"] == _CHAT_PATH))
            except APIError as error:
                await send_error(send, error)
                return
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                await wait_for_disconnect(receive)
                group.cancel_scope.cancel()  # closes the upstream request: vLLM aborts the generation

            group.start_soon(watch)
            await self._forward(scope, route, body, send)
            group.cancel_scope.cancel()

    async def _forward(self, scope, route: tuple[str, str], body: bytes, send) -> None:
        method, path = route
        url = f"{self.upstream}{path}"  # the route as listed: no query (none of them takes one), no raw path
        headers = [(name, value) for name, value in scope["headers"] if name.lower() not in _HOP_BY_HOP]
        request = self._http().build_request(method, url, headers=headers, content=body)
        try:
            response = await self._http().send(request, stream=True)
        except httpx.TransportError as exc:
            logger.error(
                "request %s: vLLM at %s is not reachable (%s)", request_id_of(scope), self.upstream, exc
            )
            await send_error(send, _unreachable(request_id_of(scope)))
            return
        try:
            if response.status_code >= 500:
                text = b""
                async for chunk in response.aiter_raw():
                    text += chunk
                    if len(text) >= _UPSTREAM_ERROR_BYTES:
                        break
                logger.error(
                    "request %s: vLLM answered %s: %s",
                    request_id_of(scope),
                    response.status_code,
                    text[:_UPSTREAM_ERROR_BYTES].decode(errors="replace"),
                )
                await send_error(send, internal_error(request_id_of(scope)))
                return
            headers = [
                (name, value) for name, value in response.headers.raw if name.lower() not in _HOP_BY_HOP
            ]
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:  # made on the server's event loop
            self._client = httpx.AsyncClient(
                timeout=_UPSTREAM_TIMEOUT, follow_redirects=False, trust_env=False
            )
        return self._client

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_proxy(upstream: str, token: str, limits: RequestLimits | None = None):
    """The proxy as an ASGI application: ``upstream`` (vLLM's loopback URL) behind ``token``."""
    limits = limits or RequestLimits()
    application = ProxyApplication(upstream, limits)
    guarded = BodySizeLimit(application, limits=limits)
    guarded = BearerAuthentication(guarded, token=token)
    return RequestGuard(guarded)


class AuthProxy:
    """:func:`build_proxy` served on ``host:port`` in a background thread (``port=0``: a free one)."""

    def __init__(
        self, upstream: str, *, token: str, host: str, port: int, limits: RequestLimits | None = None
    ):
        if not token or any(character.isspace() for character in token):
            raise ValueError("the token must be a non-empty token without whitespace")
        self.upstream = upstream
        self._app = build_proxy(upstream, token, limits)
        self._http = BackgroundHTTPServer(host, port, name="ow-vllm-proxy", lifespan="on")

    def __repr__(self) -> str:  # never show the token
        return f"AuthProxy({self.url!r} -> {self.upstream!r})"

    def start(self, timeout: float = 30.0) -> AuthProxy:
        self._http.start(self._app, timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._http.stop(timeout)

    def __enter__(self) -> AuthProxy:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._http.running

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def url(self) -> str:
        return self._http.url


async def _read_body(receive) -> bytes:
    """The request's body (already bounded by :class:`BodySizeLimit`)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _unreachable(request_id: str | None) -> APIError:
    return APIError(
        502,
        f"The model server behind this endpoint is not reachable (request id {request_id}); it may be starting or stopping.",
        type="server_error",
    )
