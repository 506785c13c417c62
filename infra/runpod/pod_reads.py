"""Reading many pods' status with few requests: one ``GET /v2/pods`` shared by every watcher.

RunPod rate-limits per account and per minute (the schema's example policy is 60 requests a minute).
A worker watching N pods and reading each one every poll would send N requests per poll; instead every
watcher asks :class:`PodListCache`, which answers from the account's last pod list when it is recent
enough for the asker (its own poll interval) and lists again otherwise. A pod missing from a list is read directly before it is reported gone: the
list may predate the pod, and "gone" crashes a run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from infra.runpod.api import RunPodClient
from infra.runpod.models import Pod


class PodListCache:
    """The account's pods as of the last list."""

    def __init__(self, client: RunPodClient, clock: Callable[[], float] = time.monotonic):
        self._client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._listed_at = float("-inf")
        self._pods: dict[str, Pod] = {}

    def get_pod(self, pod_id: str, max_age_s: float) -> Pod | None:
        """The pod as RunPod listed it at most ``max_age_s`` ago, or None when it is gone."""
        return self.get_pod_seen(pod_id, max_age_s)[0]

    def get_pod_seen(self, pod_id: str, max_age_s: float) -> tuple[Pod | None, float]:
        """:meth:`get_pod`, and when RunPod's answer came back (this object's clock): what is read
        after that moment about the pod's flow run is at least as new as the pod."""
        with self._lock:  # one refresh at a time; the others then read its answer
            if self._clock() - self._listed_at > max_age_s:
                self._pods = {pod.id: pod for pod in self._client.list_pods()}
                self._listed_at = self._clock()
            pod, listed_at = self._pods.get(pod_id), self._listed_at
        if pod is not None:
            return pod, listed_at
        pod = self._client.get_pod(pod_id)
        return pod, self._clock()
