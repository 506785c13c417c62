"""Getting a GPU pod from RunPod: look up GPU types, then try the candidates until one has capacity.

Used by the ``runpod`` worker for flow-run pods and by ``infra.runpod.dev_pod`` for dev pods. Blocking
(the SDK is); the worker calls it in a thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from infra.runpod.api import (
    RunPodClient,
    RunPodNoCapacity,
    RunPodTransientError,
    RunPodUnknownGpuType,
)
from infra.runpod.gpu_choice import CloudType, GpuCandidate, GpuPlan, GpuTypeInfo, plan_gpu_candidates
from infra.runpod.models import PodSpec


class NoGpuAvailable(RuntimeError):
    """No candidate GPU type could be had: none fits, or RunPod had no capacity for any of them."""

    def __init__(self, plan: GpuPlan, attempts: Sequence[tuple[GpuCandidate, str]]):
        self.plan = plan
        self.attempts = list(attempts)
        if not attempts:
            message = plan.explain_empty()
        else:
            tried = "; ".join(f"{candidate.describe()}: {outcome}" for candidate, outcome in attempts)
            message = f"No RunPod GPU could be had for this run. Tried, in order: {tried}."
            if plan.rejected:
                message += " Not tried: " + "; ".join(f"{gpu} ({why})" for gpu, why in plan.rejected) + "."
        super().__init__(message)


@dataclass(frozen=True)
class LaunchedPod:
    pod_id: str
    name: str
    candidate: GpuCandidate


class GpuCatalogue:
    """RunPod's answers about GPU types, cached for a few minutes (prices move slowly; launches are many)."""

    def __init__(self, max_age_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self._max_age_s = max_age_s
        self._clock = clock
        self._entries: dict[tuple[str | None, str, int], tuple[float, GpuTypeInfo | None]] = {}
        self._lock = threading.Lock()

    def lookup(
        self, client: RunPodClient, gpu_type_ids: Sequence[str], gpu_count: int
    ) -> dict[str, GpuTypeInfo]:
        """Info for each id RunPod knows; unknown ids are left out (the plan reports them)."""
        known: dict[str, GpuTypeInfo] = {}
        for gpu_type_id in dict.fromkeys(gpu_type_ids):
            key = (client.api_base_url, gpu_type_id, gpu_count)
            with self._lock:
                cached = self._entries.get(key)
            if cached is None or self._clock() - cached[0] > self._max_age_s:
                try:
                    info: GpuTypeInfo | None = client.get_gpu_type(gpu_type_id, gpu_count)
                except RunPodUnknownGpuType:
                    info = None
                with self._lock:
                    self._entries[key] = (self._clock(), info)
            else:
                info = cached[1]
            if info is not None:
                known[gpu_type_id] = info
        return known

    def plan(
        self,
        client: RunPodClient,
        *,
        preferences: Sequence[str],
        min_vram_gb: float,
        gpu_count: int,
        cloud_type: CloudType,
        price_overrides: Mapping[str, float],
    ) -> GpuPlan:
        return plan_gpu_candidates(
            min_vram_gb=min_vram_gb,
            gpu_count=gpu_count,
            preferences=preferences,
            cloud_type=cloud_type,
            gpu_types=self.lookup(client, preferences, gpu_count),
            price_overrides=price_overrides,
        )


def launch_pod(
    client: RunPodClient,
    spec: PodSpec,
    plan: GpuPlan,
    *,
    exclude_ids: Collection[str] = (),
    report: Callable[[str], None] = lambda message: None,
) -> LaunchedPod:
    """Create ``spec`` on the first candidate of ``plan`` RunPod has capacity for.

    "No capacity", an unknown GPU type and a RunPod API that keeps failing (after the client's own
    retries) move on to the next candidate; authentication and request errors stop at once, since no
    other GPU type would fare better. Raises :class:`NoGpuAvailable` listing every attempt.
    """
    attempts: list[tuple[GpuCandidate, str]] = []
    for candidate in plan.candidates:
        attempt_spec = spec.model_copy(
            update={"gpu_type_id": candidate.gpu_type_id, "cloud_type": candidate.cloud_type}
        )
        report(f"Requesting pod {spec.name} on {candidate.describe()}")
        try:
            pod_id = client.create_pod(attempt_spec, exclude_ids=exclude_ids)
        except RunPodNoCapacity:
            outcome = "no instances available"
        except RunPodUnknownGpuType:
            outcome = "unknown to RunPod"
        except RunPodTransientError as exc:
            outcome = f"RunPod kept failing ({exc})"
        else:
            return LaunchedPod(pod_id=pod_id, name=spec.name, candidate=candidate)
        attempts.append((candidate, outcome))
        report(f"{candidate.describe()}: {outcome}; trying the next GPU type")
    raise NoGpuAvailable(plan, attempts)
