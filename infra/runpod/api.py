"""The one module that talks to RunPod (through the official ``runpod`` SDK, pinned to 1.12.0).

Everything else in the project calls :class:`RunPodClient`. RunPod retires its GraphQL API in 2027;
moving to REST v2 should touch this file (and the test emulator) only.

What this layer adds to the SDK, and why:

* **Explicit credentials.** The SDK reads ``runpod.api_key`` (loaded from ``~/.runpod`` at import, not
  from ``RUNPOD_API_KEY``) and ``RUNPOD_API_BASE_URL`` at call time; both are process globals, so
  :class:`_SdkCredentialsGate` sets them per call and never lets two credentials overlap.
* **Encoded strings.** The SDK pastes names, image, docker args and env values between double quotes
  of GraphQL text without escaping; see :func:`encode_graphql_string`.
* **Classified errors.** :func:`classify_error` maps SDK, HTTP and GraphQL failures to what the caller
  should do: try another GPU type (no capacity), retry with backoff (transient), or stop (auth).
* **Idempotent create.** A create can time out after RunPod made the pod, so before every retry the
  pod is looked up by its (deterministic, unique) name.

The SDK is imported lazily: ``runpod`` takes seconds to import and this module is loaded by every
Prefect process through the worker's entry point.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from infra.runpod.gpu_choice import GpuTypeInfo
from infra.runpod.models import Pod, PodPort, PodSpec

if TYPE_CHECKING:
    from blocks.runpod import RunPodCredentials

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Capacity failures as the live API words them (matched case-insensitively, by substring).
_NO_CAPACITY_MESSAGES = (
    "no longer any instances available",
    "there are no instances available",
    "does not have the resources to deploy your pod",
)
_TRANSIENT_MESSAGES = (
    "something went wrong. please try again later",
    "internal server error",
    "timed out",
    "timeout",
    "too many requests",
    "rate limit",
)
_AUTH_MESSAGES = ("unauthorized", "not authorized", "permission", "forbidden", "api key")
_NOT_FOUND_MESSAGES = ("pod not found",)
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------------------------------------
# String encoding (pure)
# ---------------------------------------------------------------------------------------------------


def encode_graphql_string(value: str, *, field: str = "value") -> str:
    """Escape ``value`` so that the SDK's ``"…{value}…"`` interpolation parses back to exactly ``value``.

    The SDK builds ``env: [{ key: "K", value: "V" }]`` by string pasting, so a quote ends the string
    early, a backslash starts an escape and a newline is a syntax error. A JSON string body is also a
    valid GraphQL string body with the same meaning, so JSON-escaping fixes all three. Non-ASCII stays
    as raw UTF-8 (valid GraphQL source text) rather than escaped surrogate pairs (``\\ud83d\\ude80``),
    whose handling differs between GraphQL servers.
    """
    if "\x00" in value:
        raise ValueError(f"{field} contains a NUL character, which no process environment can hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{field} is not valid Unicode text (position {exc.start})") from None
    return json.dumps(value, ensure_ascii=False)[1:-1]


def encode_env(env: Mapping[str, str]) -> dict[str, str]:
    """Validate env names and encode env values for the SDK (see :func:`encode_graphql_string`)."""
    encoded: dict[str, str] = {}
    for key, value in env.items():
        if not _ENV_KEY.match(key):
            raise ValueError(
                f"env name {key!r} is not a valid variable name (letters, digits, _; no leading digit)"
            )
        encoded[key] = encode_graphql_string(str(value), field=f"env[{key!r}]")
    return encoded


# ---------------------------------------------------------------------------------------------------
# Error classification (pure)
# ---------------------------------------------------------------------------------------------------


class RunPodErrorKind(StrEnum):
    NO_CAPACITY = "no_capacity"  # try the next GPU type / cloud
    TRANSIENT = "transient"  # retry with backoff
    AUTH = "auth"  # never retry
    NOT_FOUND = "not_found"  # the pod is already gone
    UNKNOWN_GPU = "unknown_gpu"  # RunPod does not know this GPU type id
    INVALID = "invalid"  # the request itself is wrong; retrying cannot help


def classify_error(exc: BaseException) -> RunPodErrorKind:
    """What a failure of an SDK call means for the caller (see :class:`RunPodErrorKind`)."""
    import requests
    from runpod import error as runpod_error

    if isinstance(exc, runpod_error.AuthenticationError):
        return RunPodErrorKind.AUTH
    if isinstance(exc, runpod_error.QueryError):
        message = str(exc).lower()
        for kind, needles in (
            (RunPodErrorKind.NO_CAPACITY, _NO_CAPACITY_MESSAGES),
            (RunPodErrorKind.NOT_FOUND, _NOT_FOUND_MESSAGES),
            (RunPodErrorKind.TRANSIENT, _TRANSIENT_MESSAGES),
            (RunPodErrorKind.AUTH, _AUTH_MESSAGES),
        ):
            if any(needle in message for needle in needles):
                return kind
        return RunPodErrorKind.INVALID
    # A 429/5xx with an HTML body surfaces as a JSON decode error; it is a RequestException and a
    # ValueError at once, so it must be caught before the ValueError branch below.
    if isinstance(exc, requests.RequestException | json.JSONDecodeError | TimeoutError | ConnectionError):
        return RunPodErrorKind.TRANSIENT
    if isinstance(exc, KeyError | TypeError):  # an answer with neither "errors" nor "data"
        return RunPodErrorKind.TRANSIENT
    if isinstance(exc, ValueError) and "no gpu found" in str(exc).lower():
        return RunPodErrorKind.UNKNOWN_GPU
    return RunPodErrorKind.INVALID


class RunPodApiError(Exception):
    """A RunPod call failed; ``kind`` says what to do about it. Messages never include request text."""

    def __init__(self, message: str, kind: RunPodErrorKind):
        super().__init__(message)
        self.kind = kind


class RunPodAuthError(RunPodApiError):
    pass


class RunPodNoCapacity(RunPodApiError):
    pass


class RunPodTransientError(RunPodApiError):
    pass


class RunPodUnknownGpuType(RunPodApiError):
    pass


class RunPodRequestError(RunPodApiError):
    pass


_ERROR_CLASS = {
    RunPodErrorKind.AUTH: RunPodAuthError,
    RunPodErrorKind.NO_CAPACITY: RunPodNoCapacity,
    RunPodErrorKind.TRANSIENT: RunPodTransientError,
    RunPodErrorKind.UNKNOWN_GPU: RunPodUnknownGpuType,
    RunPodErrorKind.NOT_FOUND: RunPodRequestError,
    RunPodErrorKind.INVALID: RunPodRequestError,
}


def _describe(exc: BaseException) -> str:
    # QueryError also carries the full query (with every env value) in ``.query``; only the server's
    # message is safe to show.
    if isinstance(exc, KeyError):
        return f"malformed answer (missing {exc})"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def to_api_error(exc: BaseException, operation: str) -> RunPodApiError:
    """Wrap an SDK failure in the :class:`RunPodApiError` subclass its classification calls for."""
    kind = classify_error(exc)
    return _ERROR_CLASS[kind](f"RunPod {operation} failed: {_describe(exc)}", kind)


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
# The SDK's process-wide credentials
# ---------------------------------------------------------------------------------------------------


class _SdkCredentialsGate:
    """Serialises *switches* of the SDK's global credentials; calls with the same ones run in parallel.

    ``runpod.api_key`` and ``RUNPOD_API_BASE_URL`` are read when a request is sent, so a call with
    other credentials must wait until every call in flight has finished.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._active: tuple[str, str | None] | None = None
        self._in_flight = 0

    @contextmanager
    def using(self, api_key: str, api_base_url: str | None) -> Iterator[Any]:
        import runpod

        wanted = (api_key, api_base_url)
        with self._condition:
            while self._in_flight and self._active != wanted:
                self._condition.wait()
            # Set every time, not only on a switch: code outside this module may have changed them.
            runpod.api_key = api_key
            if api_base_url:
                os.environ["RUNPOD_API_BASE_URL"] = api_base_url
            else:
                os.environ.pop("RUNPOD_API_BASE_URL", None)
            self._active = wanted
            self._in_flight += 1
        try:
            yield runpod
        finally:
            with self._condition:
                self._in_flight -= 1
                self._condition.notify_all()


_GATE = _SdkCredentialsGate()


def _pod_from_answer(answer: Mapping[str, Any]) -> Pod:
    """Our Pod from the SDK's answer (GraphQL field names; ``env`` a list of ``KEY=VALUE``)."""
    raw_env = answer.get("env") or []
    if isinstance(raw_env, Mapping):
        env = {str(k): str(v) for k, v in raw_env.items()}
    else:
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw_env)
    runtime = answer.get("runtime")
    ports = [
        PodPort(
            ip=port.get("ip"),
            is_public=bool(port.get("isIpPublic")),
            private_port=port.get("privatePort"),
            public_port=port.get("publicPort"),
            type=port.get("type"),
        )
        for port in ((runtime or {}).get("ports") or [])
    ]
    return Pod(
        id=answer["id"],
        name=answer.get("name") or "",
        desired_status=answer.get("desiredStatus") or "UNKNOWN",
        image_name=answer.get("imageName"),
        env=env,
        docker_args=answer.get("dockerArgs"),
        gpu_count=answer.get("gpuCount"),
        gpu_display_name=(answer.get("machine") or {}).get("gpuDisplayName"),
        cost_per_hr=answer.get("costPerHr"),
        uptime_seconds=(runtime or {}).get("uptimeInSeconds", answer.get("uptimeSeconds")),
        runtime_up=runtime is not None,
        ports=ports,
    )


# ---------------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------------


class RunPodClient:
    """Synchronous RunPod client (the SDK uses blocking ``requests``); async callers use a thread."""

    def __init__(
        self,
        api_key: SecretStr | str,
        api_base_url: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self.api_base_url = api_base_url.rstrip("/") if api_base_url else None
        self._retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._sleep = sleep

    @classmethod
    def from_credentials(cls, credentials: RunPodCredentials, **kwargs: Any) -> RunPodClient:
        return cls(credentials.api_key, credentials.api_base_url, **kwargs)

    def __repr__(self) -> str:
        return f"RunPodClient(api_base_url={self.api_base_url!r})"

    # -- reads ---------------------------------------------------------------------------------------

    def list_pods(self) -> list[Pod]:
        answer = self._call_with_retries("list pods", lambda sdk: sdk.get_pods())
        return [_pod_from_answer(pod) for pod in answer or []]

    def get_pod(self, pod_id: str) -> Pod | None:
        """The pod, or None when RunPod no longer knows it (terminated)."""
        encoded = encode_graphql_string(pod_id, field="pod id")
        answer = self._call_with_retries(f"get pod {pod_id}", lambda sdk: sdk.get_pod(encoded))
        return _pod_from_answer(answer) if answer else None

    def find_pod_by_name(self, name: str, *, exclude_ids: Collection[str] = ()) -> Pod | None:
        """The live pod called ``name`` (names are unique by our convention), ignoring ``exclude_ids``."""
        for pod in self.list_pods():
            if pod.name == name and pod.id not in exclude_ids and pod.desired_status != "TERMINATED":
                return pod
        return None

    def get_gpu_type(self, gpu_type_id: str, gpu_count: int = 1) -> GpuTypeInfo:
        """RunPod's memory, clouds and prices for one GPU type; :class:`RunPodUnknownGpuType` if unknown."""
        encoded = encode_graphql_string(gpu_type_id, field="gpu type id")
        answer = self._call_with_retries(
            f"get GPU type {gpu_type_id!r}", lambda sdk: sdk.get_gpu(encoded, gpu_count)
        )
        return GpuTypeInfo(
            gpu_type_id=gpu_type_id,
            memory_gb=float(answer.get("memoryInGb") or 0),
            max_gpu_count=answer.get("maxGpuCount"),
            secure_cloud=bool(answer.get("secureCloud")),
            community_cloud=bool(answer.get("communityCloud")),
            secure_price=answer.get("securePrice"),
            community_price=answer.get("communityPrice"),
        )

    # -- writes --------------------------------------------------------------------------------------

    def create_pod(self, spec: PodSpec, *, exclude_ids: Collection[str] = ()) -> str:
        """Create the pod and return its id, or the id of the pod a timed-out earlier attempt made.

        Raises :class:`RunPodNoCapacity` (try elsewhere), :class:`RunPodUnknownGpuType`,
        :class:`RunPodAuthError`, :class:`RunPodRequestError`, or :class:`RunPodTransientError` once
        the retries are spent.
        """
        if not spec.gpu_type_id:
            raise ValueError(f"pod {spec.name}: gpu_type_id is required (CPU pods are not supported)")
        arguments = self._sdk_create_arguments(spec)
        operation = f"create pod {spec.name} on {spec.gpu_type_id} ({spec.cloud_type})"
        for attempt in range(self._retry.attempts):
            try:
                with _GATE.using(self._api_key.get_secret_value(), self.api_base_url) as sdk:
                    answer = sdk.create_pod(**arguments)
                return answer["id"]
            except Exception as exc:  # noqa: BLE001 - classified below
                error = to_api_error(exc, operation)
            if not isinstance(error, RunPodTransientError) or attempt + 1 == self._retry.attempts:
                raise error
            logger.warning("%s; looking for the pod before retrying", error)
            self._sleep(self._retry.delay_s(attempt, self._rng))
            existing = self.find_pod_by_name(spec.name, exclude_ids=exclude_ids)
            if existing is not None:
                logger.info("Found pod %s from an earlier create attempt of %s", existing.id, spec.name)
                return existing.id
        raise AssertionError("unreachable: the loop returns or raises")

    def terminate_pod(self, pod_id: str) -> bool:
        """Terminate the pod (ends all billing); False when it was already gone."""
        encoded = encode_graphql_string(pod_id, field="pod id")
        try:
            self._call_with_retries(f"terminate pod {pod_id}", lambda sdk: sdk.terminate_pod(encoded))
        except RunPodRequestError as error:
            if error.kind is RunPodErrorKind.NOT_FOUND:
                return False
            raise
        return True

    def stop_pod(self, pod_id: str) -> None:
        """Stop the pod's container (GPU billing ends; its volume still bills until terminated)."""
        encoded = encode_graphql_string(pod_id, field="pod id")
        self._call_with_retries(f"stop pod {pod_id}", lambda sdk: sdk.stop_pod(encoded))

    # -- plumbing ------------------------------------------------------------------------------------

    def _call_with_retries(self, operation: str, call: Callable[[Any], T]) -> T:
        for attempt in range(self._retry.attempts):
            try:
                with _GATE.using(self._api_key.get_secret_value(), self.api_base_url) as sdk:
                    return call(sdk)
            except Exception as exc:  # noqa: BLE001 - classified below
                error = to_api_error(exc, operation)
            if not isinstance(error, RunPodTransientError) or attempt + 1 == self._retry.attempts:
                raise error
            delay = self._retry.delay_s(attempt, self._rng)
            logger.warning("%s; retrying in %.1f s", error, delay)
            self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    @staticmethod
    def _sdk_create_arguments(spec: PodSpec) -> dict[str, Any]:
        def encoded(value: str | None, field: str) -> str | None:
            return None if value is None else encode_graphql_string(value, field=field)

        return {
            "name": encoded(spec.name, "name"),
            "image_name": encoded(spec.image, "image"),
            "gpu_type_id": encoded(spec.gpu_type_id, "gpu type id"),
            "cloud_type": spec.cloud_type,
            "support_public_ip": spec.support_public_ip,
            "start_ssh": spec.start_ssh,
            "data_center_id": encoded(spec.data_center_id, "data_center_id"),
            "gpu_count": spec.gpu_count,
            "volume_in_gb": spec.volume_gb,
            "container_disk_in_gb": spec.container_disk_gb,
            "min_vcpu_count": spec.min_vcpu_count,
            "min_memory_in_gb": spec.min_memory_gb,
            "docker_args": encoded(spec.docker_args, "docker_args"),
            "ports": encoded(",".join(spec.ports), "ports") if spec.ports else None,
            "volume_mount_path": encoded(spec.volume_mount_path, "volume_mount_path"),
            "env": encode_env(spec.env),
            "network_volume_id": encoded(spec.network_volume_id, "network_volume_id"),
            "allowed_cuda_versions": [
                encode_graphql_string(version, field="allowed_cuda_versions")
                for version in spec.allowed_cuda_versions
            ]
            or None,
        }
