"""Ending the RunPod pod this process runs in, with the credentials RunPod gives every pod.

RunPod sets ``RUNPOD_POD_ID`` and a pod-scoped ``RUNPOD_API_KEY`` inside each pod. Whether that key
may *terminate* (end all billing) or only *stop* (GPU billing ends, the volume still bills) is not
documented, so we try terminate first and fall back to stop; the worker's orphan sweep terminates a
stopped pod whose flow run is over.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from infra.runpod.api import RetryPolicy, RunPodApiError, RunPodClient, RunPodErrorKind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OwnPod:
    pod_id: str
    client: RunPodClient

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> OwnPod | None:
        """The pod we run in, or None outside RunPod (no ``RUNPOD_POD_ID``/``RUNPOD_API_KEY``)."""
        environ = dict(os.environ if environ is None else environ)
        pod_id, api_key = environ.get("RUNPOD_POD_ID"), environ.get("RUNPOD_API_KEY")
        if not pod_id or not api_key:
            return None
        client = RunPodClient(
            api_key, environ.get("RUNPOD_API_BASE_URL"), retry=RetryPolicy(attempts=3, base_delay_s=1.0)
        )
        return cls(pod_id=pod_id, client=client)

    def end(self, reason: str) -> bool:
        """Ask RunPod to terminate this pod (or at least stop it); True once RunPod accepted.

        On success the container is killed shortly after, so callers should just wait. On False the
        caller retries later; it must not exit, because RunPod restarts a container that exits.
        """
        logger.warning("Ending pod %s: %s", self.pod_id, reason)
        try:
            self.client.terminate_pod(self.pod_id)
            return True
        except RunPodApiError as exc:
            if exc.kind not in (RunPodErrorKind.AUTH, RunPodErrorKind.FORBIDDEN):
                logger.error("Could not terminate pod %s: %s", self.pod_id, exc)
                return False
            logger.warning("This pod's API key may not terminate it (%s); stopping it instead", exc)
        try:
            self.client.stop_pod(self.pod_id)
            return True
        except RunPodApiError as exc:
            logger.error("Could not stop pod %s either: %s", self.pod_id, exc)
            return False
