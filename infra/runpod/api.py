"""The one module that talks to RunPod: its REST API v2 (``https://api.runpod.io/v2``), over httpx.

Everything else in the project calls :class:`RunPodClient`. The wire shapes live in
:mod:`infra.runpod.models`; RunPod's OpenAPI schema (``runpod/docs``, ``api-reference-v2/openapi.json``)
is the contract, and the test emulator is validated against it.

What this layer adds to plain HTTP, and why:

* **Classified errors.** :func:`classify_failure` maps a status and RunPod's ``detail`` to what the
  caller should do, as RunPod's create-pod page tells clients to: 400 "no instances" → try another GPU
  type (capacity has no code of its own, only the detail); other 400 → this candidate was refused;
  402 → the account cannot pay, stop launching; 403 → this candidate is not open to the account;
  422 → the request is wrong, never retry; 429 → wait ``Retry-After``; 5xx and transport failures →
  retry with backoff.
* **Retries only where a request is idempotent.** Reads, DELETE and pod actions are retried. A create
  is not: a create that timed out may have made the pod, so before another attempt the pod is looked
  up by its (deterministic, unique) name. A 429 was refused before anything happened, so it is always
  safe to repeat after the wait.
* **Rate limits honoured.** ``Retry-After`` on a 429, and the ``RateLimit`` header on every answer:
  when a window has no requests left, the next request waits until it resets.
* **Secrets kept out.** The key travels only in the ``Authorization`` header; messages carry the
  operation, the status and RunPod's detail, never the request.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from infra.runpod.gpu_choice import AvailabilityLevel, GpuTypeInfo
from infra.runpod.models import Cloud, Pod, PodSpec, PodStatus, pod_from_wire

if TYPE_CHECKING:
    from blocks.runpod import RunPodCredentials

logger = logging.getLogger(__name__)

DEFAULT_API_BASE_URL = "https://api.runpod.io"
# Capacity failures as RunPod words them (matched case-insensitively, by substring).
_NO_CAPACITY_DETAILS = (
    "no longer any instances available",
    "there are no instances available",
    "does not have the resources to deploy your pod",
    "no capacity",
    "not enough capacity",
)
_BILLING_DETAILS = ("insufficient balance", "spending limit", "spend limit", "add funds")
_MAX_RETRY_AFTER_S = 120.0
_RATE_LIMIT_MEMBER = re.compile(r'"?(?P<window>[A-Za-z0-9_-]+)"?\s*;(?P<params>[^,]*)')


# ---------------------------------------------------------------------------------------------------
# Failure classification (pure)
# ---------------------------------------------------------------------------------------------------


class RunPodErrorKind(StrEnum):
    NO_CAPACITY = "no_capacity"  # try the next GPU type / cloud, or wait for stock
    REJECTED = "rejected"  # a 400 that is not capacity: this candidate was refused
    BILLING = "billing"  # 402 / spending limit: no candidate can succeed until it clears
    FORBIDDEN = "forbidden"  # 403: the account may not use this (pool, pod)
    AUTH = "auth"  # 401: the key is wrong; never retry
    NOT_FOUND = "not_found"  # 404
    CONFLICT = "conflict"  # 409: not valid in the pod's current state
    INVALID = "invalid"  # 422: the request does not match the contract; never retry
    RATE_LIMITED = "rate_limited"  # 429: wait Retry-After
    TRANSIENT = "transient"  # 5xx, timeouts, connection failures: retry with backoff


def classify_failure(status: int | None, detail: str = "") -> RunPodErrorKind:
    """What a failed call means. ``status`` None: no HTTP answer at all (transport failure)."""
    text = detail.lower()
    if status is None or status >= 500:
        return RunPodErrorKind.TRANSIENT
    if status == 429:
        return RunPodErrorKind.RATE_LIMITED
    if status == 402 or any(needle in text for needle in _BILLING_DETAILS):
        return RunPodErrorKind.BILLING
    if status == 400:
        if any(needle in text for needle in _NO_CAPACITY_DETAILS):
            return RunPodErrorKind.NO_CAPACITY
        return RunPodErrorKind.REJECTED
    return {
        401: RunPodErrorKind.AUTH,
        403: RunPodErrorKind.FORBIDDEN,
        404: RunPodErrorKind.NOT_FOUND,
        409: RunPodErrorKind.CONFLICT,
    }.get(status, RunPodErrorKind.INVALID)


class RunPodApiError(Exception):
    """A RunPod call failed; ``kind`` says what to do about it. Messages never include request text."""

    def __init__(
        self,
        message: str,
        kind: RunPodErrorKind,
        *,
        status: int | None = None,
        detail: str = "",
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s


class RunPodAuthError(RunPodApiError):
    pass


class RunPodNoCapacity(RunPodApiError):
    pass


class RunPodBillingBlocked(RunPodApiError):
    """The account cannot pay for more pods (402, spending limit): pause launches until it clears."""


class RunPodTransientError(RunPodApiError):
    pass


class RunPodRequestError(RunPodApiError):
    """The request was refused as such (400 not capacity, 403, 404, 409, 422)."""


_ERROR_CLASS: dict[RunPodErrorKind, type[RunPodApiError]] = {
    RunPodErrorKind.NO_CAPACITY: RunPodNoCapacity,
    RunPodErrorKind.BILLING: RunPodBillingBlocked,
    RunPodErrorKind.AUTH: RunPodAuthError,
    RunPodErrorKind.TRANSIENT: RunPodTransientError,
    RunPodErrorKind.RATE_LIMITED: RunPodTransientError,
}


def api_error(
    operation: str, status: int | None, detail: str, *, retry_after_s: float | None = None
) -> RunPodApiError:
    """The :class:`RunPodApiError` subclass for a failed ``operation``."""
    kind = classify_failure(status, detail)
    shown = detail if len(detail) <= 300 else detail[:297] + "..."
    where = f"HTTP {status}" if status is not None else "no answer"
    return _ERROR_CLASS.get(kind, RunPodRequestError)(
        f"RunPod {operation} failed ({where}): {shown}",
        kind,
        status=status,
        detail=detail,
        retry_after_s=retry_after_s,
    )


def problem_detail(response: httpx.Response) -> str:
    """RunPod's ``detail`` (plus the validation ``errors``) of a problem+json answer, else a short body."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, Mapping):
        detail = str(payload.get("detail") or payload.get("title") or "")
        errors = payload.get("errors")
        if isinstance(errors, list) and errors:
            detail += " (" + "; ".join(_without_env_values(str(error)) for error in errors[:5]) + ")"
        if detail:
            return detail
    text = response.text.strip()
    if response.headers.get("content-type", "").startswith("text/html") or not text:
        return response.reason_phrase or "no details"
    return text[:200]


def _without_env_values(error: str) -> str:
    """A validation error about the pod's env names the variable but never shows its value: env holds
    Prefect's API key, and these messages reach logs and the run's state."""
    path, _, _ = error.partition(":")
    return f"{path}: (invalid; value withheld)" if ".env" in path else error


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (RunPod sends an integer), capped; None when absent or unreadable."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return None
    if not seconds >= 0:
        return None
    return min(seconds, _MAX_RETRY_AFTER_S)


def rate_limit_wait_seconds(header: str | None) -> float:
    """Seconds to wait before the next request according to a ``RateLimit`` header
    (``"minute";r=0;t=12, "hour";r=2800;t=1812``): the longest reset of a window with nothing left."""
    if not header:
        return 0.0
    wait = 0.0
    for match in _RATE_LIMIT_MEMBER.finditer(header):
        params = dict(part.strip().split("=", 1) for part in match.group("params").split(";") if "=" in part)
        try:
            remaining, reset = int(params.get("r", "1")), float(params.get("t", "0"))
        except ValueError:
            continue
        if remaining <= 0 and reset > 0:
            wait = max(wait, min(reset, _MAX_RETRY_AFTER_S))
    return wait


# ---------------------------------------------------------------------------------------------------
# Retry policy (pure)
# ---------------------------------------------------------------------------------------------------


class RetryPolicy(BaseModel):
    """Exponential backoff with jitter for transient failures."""

    model_config = ConfigDict(frozen=True)

    attempts: int = Field(default=5, ge=1, description="Calls in all, including the first.")
    base_delay_s: float = Field(default=0.5, ge=0)
    max_delay_s: float = Field(default=8.0, ge=0)

    def delay_s(self, retry_number: int, rng: random.Random) -> float:
        """Seconds to wait before retry ``retry_number`` (0-based): half fixed, half random, so many
        workers hitting the same outage do not retry in lockstep."""
        ceiling = min(self.max_delay_s, self.base_delay_s * (2**retry_number))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


# ---------------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------------


def _gpu_type_from_wire(answer: Mapping[str, Any], cloud: Cloud | None) -> GpuTypeInfo:
    price = answer.get("price") or {}
    max_count = answer.get("maxCount") or {}
    availability = answer.get("availability")
    level = AvailabilityLevel(availability) if availability in AvailabilityLevel.__members__ else None
    ceiling = max(int(max_count.get("secure") or 0), int(max_count.get("community") or 0))
    return GpuTypeInfo(
        gpu_type_id=str(answer["id"]),
        memory_gb=float(answer.get("memory") or 0),
        max_gpu_count=ceiling or None,
        secure_cloud=bool(answer.get("secure")),
        community_cloud=bool(answer.get("community")),
        secure_price=price.get("secure"),
        community_price=price.get("community"),
        secure_availability=level if cloud == "SECURE" else None,
        community_availability=level if cloud == "COMMUNITY" else None,
    )


class RunPodClient:
    """Synchronous client of RunPod's REST API v2 (blocking httpx); async callers use a thread.

    Safe to share between threads. ``close()`` releases its connections.
    """

    def __init__(
        self,
        api_key: SecretStr | str,
        api_base_url: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout_s: float = 30.0,
    ):
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self.api_base_url = api_base_url.rstrip("/") if api_base_url else None
        self._retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()
        self._not_before = 0.0  # monotonic time before which no request is sent (rate limit)

    @classmethod
    def from_credentials(cls, credentials: RunPodCredentials, **kwargs: Any) -> RunPodClient:
        return cls(credentials.api_key, credentials.api_base_url, **kwargs)

    def __repr__(self) -> str:
        return f"RunPodClient(api_base_url={self.api_base_url!r})"

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    # -- reads ---------------------------------------------------------------------------------------

    def list_pods(self) -> list[Pod]:
        answer = self._request("GET", "/v2/pods", operation="list pods")
        return [pod_from_wire(pod) for pod in (answer or {}).get("pods") or []]

    def get_pod(self, pod_id: str) -> Pod | None:
        """The pod, or None when RunPod no longer knows it (terminated)."""
        try:
            answer = self._request("GET", f"/v2/pods/{_path_id(pod_id)}", operation=f"get pod {pod_id}")
        except RunPodRequestError as error:
            if error.kind is RunPodErrorKind.NOT_FOUND:
                return None
            raise
        return pod_from_wire(answer)

    def pods_named(self, name: str, *, exclude_ids: Collection[str] = ()) -> list[Pod]:
        """The live pods called ``name`` (one, by our naming convention, unless a create was doubled)."""
        return [
            pod
            for pod in self.list_pods()
            if pod.name == name and pod.id not in exclude_ids and pod.status is not PodStatus.TERMINATED
        ]

    def find_pod_by_name(self, name: str, *, exclude_ids: Collection[str] = ()) -> Pod | None:
        pods = self.pods_named(name, exclude_ids=exclude_ids)
        return pods[0] if pods else None

    def gpu_catalog(self, gpu_count: int = 1, cloud: Cloud | None = None) -> dict[str, GpuTypeInfo]:
        """Every GPU type RunPod offers for pods, with prices, and stock for ``gpu_count`` GPUs in
        ``cloud`` when one is named (``include=AVAILABILITY&product=POD``)."""
        params: dict[str, Any] = {}
        if cloud is not None:
            params = {"include": "AVAILABILITY", "product": "POD", "count": gpu_count, "cloud": cloud}
        answer = self._request("GET", "/v2/catalog/gpus", params=params, operation="list GPU types")
        return {str(gpu["id"]): _gpu_type_from_wire(gpu, cloud) for gpu in (answer or {}).get("gpus") or []}

    def pod_billing_usd(self, pod_id: str) -> float | None:
        """What RunPod billed for the pod so far (``GET /v2/billing/pods``), or None if it has no record."""
        answer = self._request(
            "GET", "/v2/billing/pods", params={"podId": pod_id}, operation=f"read billing of pod {pod_id}"
        )
        totals = ((answer or {}).get("metadata") or {}).get("totals") or {}
        total = totals.get("totalAmount")
        return float(total) if isinstance(total, int | float) else None

    # -- writes --------------------------------------------------------------------------------------

    def create_pod(self, spec: PodSpec, *, exclude_ids: Collection[str] = ()) -> Pod:
        """Create the pod, or return the pod an earlier, timed-out attempt made.

        Raises :class:`RunPodNoCapacity` (try elsewhere), :class:`RunPodBillingBlocked`,
        :class:`RunPodAuthError`, :class:`RunPodRequestError`, or :class:`RunPodTransientError` once the
        retries are spent — in which case the caller must look the pod up by name before trying
        anything else, since the last attempt may still have made it.
        """
        body = spec.create_request()
        operation = f"create pod {spec.name} on {spec.gpu_count}x {spec.gpu_type_id} ({spec.cloud})"
        for attempt in range(self._retry.attempts):
            try:
                return pod_from_wire(self._send("POST", "/v2/pods", json=body, operation=operation))
            except RunPodApiError as error:
                if error.kind is RunPodErrorKind.RATE_LIMITED and attempt + 1 < self._retry.attempts:
                    continue  # refused before anything happened; _send already waited
                if error.kind is not RunPodErrorKind.TRANSIENT or attempt + 1 == self._retry.attempts:
                    raise
                logger.warning("%s; looking for the pod before retrying", error)
            self._sleep(self._retry.delay_s(attempt, self._rng))
            existing = self.find_pod_by_name(spec.name, exclude_ids=exclude_ids)
            if existing is not None:
                logger.info("Found pod %s from an earlier create attempt of %s", existing.id, spec.name)
                return existing
        raise AssertionError("unreachable: the loop returns or raises")

    def terminate_pod(self, pod_id: str) -> bool:
        """Terminate the pod (ends all billing); False when it was already gone."""
        try:
            self._request("DELETE", f"/v2/pods/{_path_id(pod_id)}", operation=f"terminate pod {pod_id}")
        except RunPodRequestError as error:
            if error.kind is RunPodErrorKind.NOT_FOUND:
                return False
            raise
        return True

    def stop_pod(self, pod_id: str) -> None:
        """Stop the pod's container (compute billing ends; its disk still bills until terminated)."""
        self._request(
            "POST",
            f"/v2/pods/{_path_id(pod_id)}/action",
            json={"action": "stop"},
            operation=f"stop pod {pod_id}",
        )

    # -- plumbing ------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """An idempotent request, retried on transient failures and rate limits."""
        for attempt in range(self._retry.attempts):
            try:
                return self._send(method, path, params=params, json=json, operation=operation)
            except RunPodApiError as error:
                retryable = error.kind in (RunPodErrorKind.TRANSIENT, RunPodErrorKind.RATE_LIMITED)
                if not retryable or attempt + 1 == self._retry.attempts:
                    raise
                if error.kind is RunPodErrorKind.TRANSIENT:
                    delay = self._retry.delay_s(attempt, self._rng)
                    logger.warning("%s; retrying in %.1f s", error, delay)
                    self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    base_url=self.api_base_url or DEFAULT_API_BASE_URL,
                    timeout=self._timeout,
                    headers={"Accept": "application/json"},
                    follow_redirects=False,
                )
            return self._http

    def _send(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """One request; raises :class:`RunPodApiError` on any failure. A 429 waits before raising."""
        wait = self._not_before - time.monotonic()
        if wait > 0:
            logger.info("RunPod rate limit: waiting %.1f s before %s", wait, operation)
            self._sleep(wait)
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
        try:
            response = self._client().request(method, path, params=params, json=json, headers=headers)
        except httpx.TransportError as exc:
            raise api_error(operation, None, type(exc).__name__ + (f": {exc}" if str(exc) else "")) from None
        reset_wait = rate_limit_wait_seconds(response.headers.get("ratelimit"))
        if reset_wait:
            self._not_before = max(self._not_before, time.monotonic() + reset_wait)
        if response.status_code < 400:
            if response.status_code == 204 or not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise api_error(operation, response.status_code, "the answer is not JSON") from None
        retry_after = retry_after_seconds(response.headers)
        error = api_error(
            operation, response.status_code, problem_detail(response), retry_after_s=retry_after
        )
        if error.kind is RunPodErrorKind.RATE_LIMITED:
            delay = retry_after if retry_after is not None else self._retry.max_delay_s
            logger.warning("%s; waiting %.1f s (Retry-After)", error, delay)
            self._sleep(delay)
        raise error


def _path_id(pod_id: str) -> str:
    """A pod id as one path segment; anything else is refused rather than sent to another path."""
    if not pod_id or not re.fullmatch(r"[A-Za-z0-9_-]+", pod_id):
        raise ValueError(f"{pod_id!r} is not a RunPod pod id (letters, digits, '-' and '_')")
    return pod_id
