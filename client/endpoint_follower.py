"""Keep an OpenAI client working while its API deployment recovers from a lost pod.

When the GPU stage of ``api/serve`` loses its pod, the control flow starts it again on a new pod
under the same job ID (``tasks/job_control.py``): same bearer token, a new URL, the same endpoint
record (``jobs/<job_id>/endpoint.json``) updated in place. An :class:`EndpointFollower` watches
that record for one deployment; :class:`FollowingTransport` (``AsyncFollowingTransport``) is the
HTTP transport of the ``openai`` clients :class:`client.api.ApiDeployment` hands out. A request
that finds no server (connection refused or reset, RunPod's proxy answering 502/503 or its own
404) makes the follower wait, with backoff and up to ``recovery_timeout`` seconds, until the record
says ``serving`` at a URL whose ``/health`` answers; the request is then sent again there. So
``client.chat.completions.create(...)`` simply takes longer across a recovery.

Only a request whose answer never started is sent again: a stream cut off half-way still fails,
as part of it was already returned. The follower gives up at once when the deployment has ended
(its record says so, or its control flow run is over).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from collections.abc import Callable
from urllib.error import URLError
from urllib.request import urlopen

from compute.serving.stage import ENDED_STATUSES, SERVING

logger = logging.getLogger(__name__)

# RunPod's proxy answers these for a pod that is gone or not listening; our server and vLLM answer
# 404 only as JSON (an unknown model), which is an answer, not a lost server.
PROXY_LOSS_STATUSES = frozenset({502, 503})


def healthy(base_url: str, timeout: float = 5.0) -> bool:
    """Whether the server under an OpenAI base URL (``…/v1``) answers its ``/health`` route."""
    root = base_url.removesuffix("/").removesuffix("/v1")
    try:
        with urlopen(f"{root}/health", timeout=timeout) as response:  # noqa: S310 - the deployment's own URL
            return response.status == 200
    except (URLError, OSError, ValueError):
        return False


def http_module():
    """The HTTP library the installed ``openai`` is built on (``httpx2`` from openai 3, ``httpx`` before):
    a transport must come from the same library as the client it serves."""
    import openai

    client_class = next(cls for cls in openai.DefaultHttpxClient.__mro__ if cls.__name__ == "Client")
    return importlib.import_module(client_class.__module__.split(".")[0])


class EndpointFollower:
    """The current URL and token of one deployment, and the wait for it to serve again after a loss.

    ``read_record`` returns the deployment's endpoint record (None while there is none);
    ``read_token`` the value of the Secret a record names (None if it is gone); ``deployment_ended``
    a sentence when the deployment is over (its control flow run final), else None.
    """

    def __init__(
        self,
        job_id: str,
        base_url: str,
        api_key: str,
        *,
        read_record: Callable[[], dict | None],
        read_token: Callable[[str], str | None],
        deployment_ended: Callable[[], str | None] = lambda: None,
        recovery_timeout: float = 1800.0,
        first_poll_seconds: float = 0.5,
        max_poll_seconds: float = 10.0,
        is_healthy: Callable[[str], bool] = healthy,
        on_follow: Callable[[str, str], None] | None = None,
    ):
        self.job_id = job_id
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._read_record = read_record
        self._read_token = read_token
        self._deployment_ended = deployment_ended
        self.recovery_timeout = recovery_timeout
        self.first_poll_seconds = first_poll_seconds
        self.max_poll_seconds = max_poll_seconds
        self._is_healthy = is_healthy
        self._on_follow = on_follow
        self._lock = threading.Lock()  # one request waits and reads; the others follow what it found
        self.ended: str | None = None  # why the deployment will not serve again, once known
        self._gave_up_at: float | None = None

    def __repr__(self) -> str:  # never show the token
        return f"EndpointFollower(job_id={self.job_id!r}, base_url={self._base_url!r}, ended={self.ended!r})"

    @property
    def current(self) -> tuple[str, str]:
        """(base URL without a trailing slash, bearer token) to send requests with now."""
        return self._base_url, self._api_key

    def close(self, why: str = "the deployment was closed by its client") -> None:
        """Stop following: requests that find no server fail at once from now on."""
        self.ended = why

    def recover(self, failed_base_url: str) -> bool:
        """Wait until the deployment serves again after a request to ``failed_base_url`` found no server.

        True once :attr:`current` names a healthy server (at once if another request already
        followed the deployment away from ``failed_base_url``); False when the deployment has ended
        or ``recovery_timeout`` passed.
        """
        asked = time.monotonic()
        with self._lock:
            if self._base_url != failed_base_url.rstrip("/"):
                return True
            if self.ended is not None:
                return False
            if self._gave_up_at is not None and self._gave_up_at >= asked:
                return False  # another request waited the whole time while this one queued behind it
            logger.warning(
                "API deployment %s: no server at %s; waiting up to %.0f s for it to serve again",
                self.job_id,
                failed_base_url,
                self.recovery_timeout,
            )
            deadline = time.monotonic() + self.recovery_timeout
            delay = self.first_poll_seconds
            while True:
                if self._follow_record():
                    return True
                remaining = deadline - time.monotonic()
                if self.ended is not None or remaining <= 0:
                    self._gave_up_at = time.monotonic()
                    logger.warning(
                        "API deployment %s: gave up waiting for it to serve again (%s)",
                        self.job_id,
                        self.ended or f"not serving after {self.recovery_timeout:.0f} s",
                    )
                    return False
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, self.max_poll_seconds)

    def refresh_token(self, rejected_api_key: str) -> bool:
        """After a 401: True when the deployment's Secret now holds another token (now :attr:`current`)."""
        with self._lock:
            if self._api_key != rejected_api_key:
                return True
            record = self._read_record()
            token = (
                self._read_token(record["token_secret"]) if record and record.get("token_secret") else None
            )
            if not token or token == self._api_key:
                return False
            self._api_key = token
            self._notify()
            return True

    def _follow_record(self) -> bool:
        """One look at the record: True (and :attr:`current` updated) when it names a healthy server;
        sets :attr:`ended` when the deployment is over."""
        record = self._read_record()
        status = record.get("status") if record else None
        if status in ENDED_STATUSES:
            self.ended = f"its server {status}"
            return False
        why = self._deployment_ended()
        if why is not None:
            self.ended = why
            return False
        if status != SERVING or not self._is_healthy(record["base_url"]):
            return False
        base_url = record["base_url"].rstrip("/")
        api_key = self._read_token(record["token_secret"]) or self._api_key
        if base_url != self._base_url:
            logger.warning(
                "API deployment %s serves again at %s (attempt %s)",
                self.job_id,
                base_url,
                record.get("attempt", 1),
            )
        self._base_url, self._api_key = base_url, api_key
        self._notify()
        return True

    def _notify(self) -> None:
        if self._on_follow is not None:
            self._on_follow(self._base_url, self._api_key)


def _is_lost_server_answer(response) -> bool:
    if response.status_code in PROXY_LOSS_STATUSES:
        return True
    return response.status_code == 404 and "json" not in response.headers.get("content-type", "")


def _retargeted(http, request, body: bytes, client_base_url: str, base_url: str, api_key: str):
    """``request`` sent to ``base_url`` with ``api_key`` instead, if it was meant for ``client_base_url``."""
    url = str(request.url)
    if url != client_base_url and not url.startswith(client_base_url + "/"):
        return request  # not a request to the deployment
    new_url = base_url + url[len(client_base_url) :]
    bearer = f"Bearer {api_key}"
    if new_url == url and request.headers.get("authorization", bearer) == bearer:
        return request
    headers = [(name, value) for name, value in request.headers.multi_items() if name.lower() != "host"]
    headers = [(name, bearer if name.lower() == "authorization" else value) for name, value in headers]
    return http.Request(request.method, new_url, headers=headers, content=body, extensions=request.extensions)


def _bearer_of(request) -> str | None:
    value = request.headers.get("authorization", "")
    return value.removeprefix("Bearer ") if value.startswith("Bearer ") else None


def _lost_connection_errors(http) -> tuple[type[BaseException], ...]:
    # No answer started: the server is gone (refused, reset, closed before a status line). Not a
    # read timeout: a long generation is not a lost server.
    return (http.ConnectError, http.ConnectTimeout, http.RemoteProtocolError, http.ReadError, http.WriteError)


def following_transport(follower: EndpointFollower, client_base_url: str, max_follows: int = 3):
    """An HTTP transport for an ``openai.OpenAI`` created with ``client_base_url``: it sends each
    request to where ``follower`` says the deployment serves now, and follows it across a recovery."""
    http = http_module()
    lost_connection = _lost_connection_errors(http)
    client_base_url = client_base_url.rstrip("/")

    class FollowingTransport(http.BaseTransport):
        def __init__(self):
            self._inner = http.HTTPTransport()

        def handle_request(self, request):
            body = request.read()
            for follow in range(max_follows + 1):
                base_url, api_key = follower.current
                outgoing = _retargeted(http, request, body, client_base_url, base_url, api_key)
                last = follow == max_follows
                try:
                    response = self._inner.handle_request(outgoing)
                except lost_connection:
                    if last or not follower.recover(base_url):
                        raise
                    _pause_if_same_server(follower, base_url, follow)
                    continue
                if not last and _is_lost_server_answer(response) and follower.recover(base_url):
                    response.close()
                    _pause_if_same_server(follower, base_url, follow)
                    continue
                if (
                    not last
                    and response.status_code == 401
                    and follower.refresh_token(_bearer_of(outgoing) or "")
                ):
                    response.close()
                    continue
                return response
            raise AssertionError("unreachable")

        def close(self):
            self._inner.close()

    return FollowingTransport()


def async_following_transport(follower: EndpointFollower, client_base_url: str, max_follows: int = 3):
    """The ``openai.AsyncOpenAI`` twin of :func:`following_transport` (the waits run in a thread)."""
    http = http_module()
    lost_connection = _lost_connection_errors(http)
    client_base_url = client_base_url.rstrip("/")

    class AsyncFollowingTransport(http.AsyncBaseTransport):
        def __init__(self):
            self._inner = http.AsyncHTTPTransport()

        async def handle_async_request(self, request):
            body = await request.aread()
            for follow in range(max_follows + 1):
                base_url, api_key = follower.current
                outgoing = _retargeted(http, request, body, client_base_url, base_url, api_key)
                last = follow == max_follows
                try:
                    response = await self._inner.handle_async_request(outgoing)
                except lost_connection:
                    if last or not await asyncio.to_thread(follower.recover, base_url):
                        raise
                    await _async_pause_if_same_server(follower, base_url, follow)
                    continue
                if (
                    not last
                    and _is_lost_server_answer(response)
                    and await asyncio.to_thread(follower.recover, base_url)
                ):
                    await response.aclose()
                    await _async_pause_if_same_server(follower, base_url, follow)
                    continue
                if not last and response.status_code == 401:
                    if await asyncio.to_thread(follower.refresh_token, _bearer_of(outgoing) or ""):
                        await response.aclose()
                        continue
                return response
            raise AssertionError("unreachable")

        async def aclose(self):
            await self._inner.aclose()

    return AsyncFollowingTransport()


def _same_server_pause(follower: EndpointFollower, failed_base_url: str, follow: int) -> float:
    # The record names the server that just failed, and it answers its health check: a passing
    # fault, so the next try waits a little (1, 2, 4 s) rather than hammering it.
    return 2.0**follow if follower.current[0] == failed_base_url.rstrip("/") else 0.0


def _pause_if_same_server(follower: EndpointFollower, failed_base_url: str, follow: int) -> None:
    time.sleep(_same_server_pause(follower, failed_base_url, follow))


async def _async_pause_if_same_server(follower: EndpointFollower, failed_base_url: str, follow: int) -> None:
    await asyncio.sleep(_same_server_pause(follower, failed_base_url, follow))
