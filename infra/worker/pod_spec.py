"""How a flow run's pod is named, labelled and started. Pure functions, shared by the worker and its sweep.

Naming convention (the worker and its orphan sweep rely on it):

* pod name ``ow-<work pool slug>-<flow run id>``: unique per flow run and the same on every attempt,
  so a create that timed out after RunPod made the pod finds that pod instead of making a second;
* env ``OW_RUNPOD_WORK_POOL=<work pool name>`` and ``PREFECT__FLOW_RUN_ID=<flow run id>``: the exact
  owner, which the sweep reads because slugs of different pool names can collide;
* env ``OW_POD_START_TIMEOUT_SECONDS`` and ``OW_POD_MAX_RUN_HOURS``: the run's own bounds, written at
  launch so that a sweep (any worker of the pool, after a restart) applies them from the pod's age to a
  pod nobody watches, whatever its run's state.

What else a pod's env holds is decided by :func:`pod_env`: of the worker's own Prefect settings only
those in :data:`POD_PREFECT_SETTINGS` (RunPod shows a pod's env in its console, so the worker's server
auth string, database URL and the like never go there).

Dev pods (``infra.runpod.dev_pod``) are named ``ow-dev-…`` and carry no work-pool label, so no sweep touches them.
"""

from __future__ import annotations

import re
import shlex
import uuid
from collections.abc import Collection, Mapping

from infra.bounds import MAX_RUN_HOURS_MAX, POD_START_TIMEOUT_SECONDS_MAX, parse_bounded_positive
from infra.runpod.models import Pod

POD_NAME_PREFIX = "ow-"
WORK_POOL_ENV = "OW_RUNPOD_WORK_POOL"
FLOW_RUN_ID_ENV = "PREFECT__FLOW_RUN_ID"
TTL_HOURS_ENV = "TTL_HOURS"
START_TIMEOUT_ENV = "OW_POD_START_TIMEOUT_SECONDS"
MAX_RUN_HOURS_ENV = "OW_POD_MAX_RUN_HOURS"
# RunPod gives each pod its own, pod-scoped key under this name; the account key must never replace it.
POD_API_KEY_ENV = "RUNPOD_API_KEY"
# The worker's own Prefect settings a pod gets: where the API is and how to authenticate to it (the
# engine in the pod reads its flow run, reports its states and sends its logs there), and how its logs
# are shipped. Every other setting the worker has (its server's auth string, a database URL, profile
# paths of the worker machine) stays on the worker.
POD_PREFECT_SETTINGS = frozenset(
    {"PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_API_TLS_INSECURE_SKIP_VERIFY"}
)
POD_PREFECT_SETTING_PREFIXES = ("PREFECT_LOGGING_",)
# Prefect's per-run variables (flow run id, worker and deployment names): identifiers, not settings.
PREFECT_RUNTIME_PREFIX = "PREFECT__"
POD_ENTRYPOINT = ("python", "-m", "infra.pod.entrypoint")
# Placeholder until the pod image (infra/Dockerfile) is pushed somewhere RunPod can pull from.
DEFAULT_IMAGE = "ow-prefect-pod:latest"
# RunPod ids, roughly cheapest-per-GB first; a pool's gpu_types replaces this list.
DEFAULT_GPU_TYPES = (
    "NVIDIA RTX A6000",
    "NVIDIA A40",
    "NVIDIA L40S",
    "NVIDIA A100 80GB PCIe",
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA H100 80GB HBM3",
    "NVIDIA H200",
)
_MAX_POOL_SLUG = 24
_UUID_SUFFIX = re.compile(r"-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def pool_slug(work_pool_name: str) -> str:
    """Lower-case letters, digits and dashes only, at most 24 characters (never empty)."""
    slug = re.sub(r"[^a-z0-9]+", "-", work_pool_name.lower()).strip("-")[:_MAX_POOL_SLUG].strip("-")
    return slug or "pool"


def pod_name_for(work_pool_name: str, flow_run_id: uuid.UUID) -> str:
    """The one name a flow run's pod ever has: ``ow-<pool slug>-<flow run id>``."""
    return f"{POD_NAME_PREFIX}{pool_slug(work_pool_name)}-{flow_run_id}"


def belongs_to_pool(pod: Pod, work_pool_name: str) -> bool:
    """Whether the pod was started by a ``runpod`` worker of this work pool."""
    return pod.name.startswith(f"{POD_NAME_PREFIX}{pool_slug(work_pool_name)}-") and (
        pod.env.get(WORK_POOL_ENV) == work_pool_name
    )


def flow_run_id_of(pod: Pod) -> uuid.UUID | None:
    """The flow run a pod works for (its env, else its name), or None when neither says."""
    for candidate in (pod.env.get(FLOW_RUN_ID_ENV), *(_UUID_SUFFIX.findall(pod.name) or [None])):
        if candidate:
            try:
                return uuid.UUID(candidate)
            except ValueError:
                continue
    return None


def launch_bound_seconds(pod: Pod, name: str) -> float | None:
    """A bound written on the pod at launch (:data:`START_TIMEOUT_ENV` in seconds,
    :data:`MAX_RUN_HOURS_ENV` in hours, returned in seconds); None when absent or unreadable."""
    maximum = MAX_RUN_HOURS_MAX if name == MAX_RUN_HOURS_ENV else POD_START_TIMEOUT_SECONDS_MAX
    try:
        value = parse_bounded_positive(pod.env.get(name), name=name, default=None, maximum=maximum)
    except ValueError:
        return None
    return value * 3600 if name == MAX_RUN_HOURS_ENV else value


def pod_start_command(flow_run_command: str) -> str:
    """The pod's start command (``args``): our entrypoint, then the flow-run command Prefect prepared.

    Built as an argument list and joined with ``shlex`` so any quoting in the command survives the
    trip through RunPod (and the emulator splits it back with ``shlex.split``).
    """
    arguments = shlex.split(flow_run_command)
    if not arguments:
        raise ValueError(
            "the flow-run command is empty; leave the `command` job variable unset for Prefect's default"
        )
    return shlex.join([*POD_ENTRYPOINT, "--", *arguments])


def pod_env(
    job_env: Mapping[str, str | None],
    *,
    ttl_hours: float,
    work_pool_name: str,
    api_base_url: str | None,
    start_timeout_seconds: float | None = None,
    max_run_hours: float | None = None,
    set_in_job_variables: Collection[str] = (),
) -> dict[str, str]:
    """The pod's environment: the job configuration's env as Prefect prepared it, less the worker's
    Prefect settings a pod does not need, plus what our pod side needs.

    ``job_env`` holds the worker's explicitly set Prefect settings, Prefect's per-run variables
    (``PREFECT__*``) and the pool's and deployment's ``env`` variable; ``set_in_job_variables`` names
    the latter, which pass as set (a user who puts a setting there means the pod to have it). Of the
    worker's settings only :data:`POD_PREFECT_SETTINGS` and ``PREFECT_LOGGING_*`` pass.
    """
    env = {
        key: value
        for key, value in job_env.items()
        if value is not None and (key in set_in_job_variables or pod_needs_setting(key))
    }
    env.pop(POD_API_KEY_ENV, None)
    env[TTL_HOURS_ENV] = format(ttl_hours, "g")
    env[WORK_POOL_ENV] = work_pool_name
    if start_timeout_seconds:
        env[START_TIMEOUT_ENV] = format(start_timeout_seconds, "g")
    if max_run_hours:
        env[MAX_RUN_HOURS_ENV] = format(max_run_hours, "g")
    if api_base_url:
        # The pod ends itself through the same API the worker uses (an emulator or a proxy).
        env["RUNPOD_API_BASE_URL"] = api_base_url
    return env


def pod_needs_setting(name: str) -> bool:
    """Whether an env variable of the worker's Prefect configuration goes into its pods: anything
    that is not a Prefect setting, Prefect's per-run variables, and :data:`POD_PREFECT_SETTINGS`."""
    if not name.startswith("PREFECT_") or name.startswith(PREFECT_RUNTIME_PREFIX):
        return True
    return name in POD_PREFECT_SETTINGS or name.startswith(POD_PREFECT_SETTING_PREFIXES)
