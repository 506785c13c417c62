"""Getting a GPU pod from RunPod: read the catalog, then try the candidates until one has capacity.

Used by the ``runpod`` worker for flow-run pods and by ``infra.runpod.dev_pod`` for dev pods.
Blocking (httpx's sync client); the worker calls it in a thread. What to do when nothing could be had
(wait, and for how long) is the caller's decision: see :mod:`infra.runpod.capacity`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from infra.runpod.api import (
    RunPodApiError,
    RunPodClient,
    RunPodErrorKind,
    RunPodNoCapacity,
    RunPodRequestError,
    RunPodTransientError,
)
from infra.runpod.gpu_choice import (
    CLOUDS_FOR,
    CloudType,
    GpuCandidate,
    GpuPlan,
    GpuTypeInfo,
    merge_plans,
    plan_gpu_candidates,
)
from infra.runpod.hardware import HardwareOption
from infra.runpod.models import Pod, PodSpec

logger = logging.getLogger(__name__)



class NoGpuAvailable(RuntimeError):
    """No candidate GPU could be had now: none fits, none is in stock, or every create was refused."""

    def __init__(self, plan: GpuPlan, attempts: Sequence[tuple[GpuCandidate, str]]):
        self.plan = plan
        self.attempts = list(attempts)
        if not plan.can_ever_run:
            message = plan.explain_empty()
        else:
            parts = []
            if attempts:
                tried = "; ".join(f"{candidate.describe()}: {outcome}" for candidate, outcome in attempts)
                parts.append(f"Tried, in order: {tried}.")
            if plan.out_of_stock:
                parts.append(f"Not tried: {plan.explain_out_of_stock()} (RunPod's catalog, or cooling down).")
            if plan.rejected:
                parts.append("Not usable: " + "; ".join(f"{gpu} ({why})" for gpu, why in plan.rejected) + ".")
            message = "No RunPod GPU could be had for this run. " + " ".join(parts)
        super().__init__(message)

    @property
    def waiting_can_help(self) -> bool:
        """Something fits the request: stock may come back. Otherwise the request itself is wrong."""
        if not self.plan.can_ever_run:
            return False
        # Every candidate refused with a non-capacity 400/403: RunPod's docs say to read the last
        # detail as a problem with the request, which waiting will not fix.
        refused_everywhere = bool(self.attempts) and all(
            outcome.startswith("refused") for _, outcome in self.attempts
        )
        return bool(self.plan.out_of_stock) or not refused_everywhere


@dataclass(frozen=True)
class LaunchedPod:
    pod_id: str
    name: str
    candidate: GpuCandidate
    pod: Pod | None = None


class GpuCatalogue:
    """RunPod's catalog per (GPU count, cloud), cached briefly: stock moves by the minute, launches are many."""

    def __init__(self, max_age_s: float = 20.0, clock: Callable[[], float] = time.monotonic):
        self._max_age_s = max_age_s
        self._clock = clock
        self._entries: dict[tuple[str | None, int, str], tuple[float, dict[str, GpuTypeInfo]]] = {}
        self._lock = threading.Lock()

    def lookup(self, client: RunPodClient, gpu_count: int, cloud_type: CloudType) -> dict[str, GpuTypeInfo]:
        """Every GPU type RunPod knows, with stock for ``gpu_count`` GPUs in each cloud of ``cloud_type``."""
        merged: dict[str, GpuTypeInfo] = {}
        for cloud in CLOUDS_FOR[cloud_type]:
            key = (client.api_base_url, gpu_count, cloud)
            with self._lock:
                cached = self._entries.get(key)
            if cached is None or self._clock() - cached[0] > self._max_age_s:
                answer = client.gpu_catalog(gpu_count, cloud)  # type: ignore[arg-type]
                with self._lock:
                    self._entries[key] = (self._clock(), answer)
            else:
                answer = cached[1]
            for gpu_type_id, info in answer.items():
                merged[gpu_type_id] = merged[gpu_type_id].merged(info) if gpu_type_id in merged else info
        return merged

    def forget(self) -> None:
        """Drop cached stock (after a create failed for capacity, the catalog was wrong)."""
        with self._lock:
            self._entries.clear()

    def plan(
        self,
        client: RunPodClient,
        *,
        options: Sequence[HardwareOption],
        min_vram_gb: float,
        cloud_type: CloudType,
        price_overrides: Mapping[str, float],
    ) -> GpuPlan:
        """Candidates for every hardware option, in stock first, cheapest pod first."""
        plans = [
            plan_gpu_candidates(
                min_vram_gb=min_vram_gb,
                gpu_count=option.gpu_count,
                preferences=list(option.gpu_type_ids),
                cloud_type=cloud_type,
                gpu_types=self.lookup(client, option.gpu_count, cloud_type),
                price_overrides=price_overrides,
            )
            for option in options
        ]
        return plans[0] if len(plans) == 1 else merge_plans(plans)


def launch_pod(
    client: RunPodClient,
    spec: PodSpec,
    plan: GpuPlan,
    *,
    exclude_ids: Collection[str] = (),
    report: Callable[[str], None] = lambda message: None,
) -> LaunchedPod:
    """Create ``spec`` on the first candidate of ``plan`` RunPod has capacity for; exactly one pod.

    "No capacity", a refused candidate (400/403) and a RunPod API that keeps failing (after the
    client's own retries) move on to the next candidate — but after a transient failure the pod is
    first looked up by name, since the create may have succeeded without its answer arriving. Once a
    pod is made, any other live pod of the same name (a doubled create) is terminated. Billing (402),
    authentication and contract (422) errors stop at once: no other GPU type would fare better.
    Raises :class:`NoGpuAvailable` listing every attempt.
    """
    attempts: list[tuple[GpuCandidate, str]] = []
    for candidate in plan.candidates:
        attempt_spec = spec.model_copy(
            update={
                "gpu_type_id": candidate.gpu_type_id,
                "cloud": candidate.cloud_type,
                "gpu_count": candidate.gpu_count,
            }
        )
        report(f"Requesting pod {spec.name} on {candidate.describe()}")
        try:
            pod = client.create_pod(attempt_spec, exclude_ids=exclude_ids)
        except RunPodNoCapacity:
            outcome = "no instances available"
        except RunPodTransientError as exc:
            existing = client.find_pod_by_name(spec.name, exclude_ids=exclude_ids)
            if existing is not None:
                report(f"Found pod {existing.id} made by the last, unanswered create of {spec.name}")
                return _launched(client, spec, candidate, existing, exclude_ids, report)
            outcome = f"RunPod kept failing ({exc})"
        except RunPodRequestError as exc:
            if exc.kind not in (RunPodErrorKind.REJECTED, RunPodErrorKind.FORBIDDEN):
                raise
            outcome = f"refused: {exc.detail or exc}"
        else:
            return _launched(client, spec, candidate, pod, exclude_ids, report)
        attempts.append((candidate, outcome))
        report(f"{candidate.describe()}: {outcome}; trying the next GPU type")
    raise NoGpuAvailable(plan, attempts)


def _launched(
    client: RunPodClient,
    spec: PodSpec,
    candidate: GpuCandidate,
    pod: Pod,
    exclude_ids: Collection[str],
    report: Callable[[str], None],
) -> LaunchedPod:
    try:
        doubles = client.pods_named(spec.name, exclude_ids={pod.id, *exclude_ids})
    except RunPodApiError as exc:
        # The sweep looks for doubles again (it terminates any pod of a run that has another watched).
        logger.warning("Could not check for doubled pods named %s: %s", spec.name, exc)
        doubles = []
    for double in doubles:
        report(f"Terminating pod {double.id}: a second pod named {spec.name} from a doubled create")
        try:
            client.terminate_pod(double.id)
        except RunPodApiError as exc:
            logger.warning("Could not terminate doubled pod %s: %s", double.id, exc)
    return LaunchedPod(pod_id=pod.id, name=spec.name, candidate=candidate, pod=pod)
