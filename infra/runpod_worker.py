"""The ``runpod`` worker: each flow run of a work pool runs in its own RunPod GPU pod.

To start one::

    prefect work-pool create gpu --type runpod
    prefect worker start --pool gpu --type runpod

then point the pool's ``runpod_credentials`` variable at a saved ``ow-runpod-credentials`` block
(UI: work pool → Edit; or per deployment, ``job_variables: {runpod_credentials:
"{{ prefect.blocks.ow-runpod-credentials.my-account }}"}``). The worker type is registered through the
``prefect.collections`` entry point of this project, so installing the project is all it takes.

Per flow run the worker:

1. chooses GPU types: those of ``gpu_types`` with at least ``min_vram_gb / gpu_count`` GB each,
   cheapest first (:mod:`infra.gpu_choice`), and on "no instances available" tries the next; when
   all are exhausted the run ends Crashed with a message listing every attempt;
2. creates one pod named ``ow-<pool>-<flow run id>`` (:mod:`infra.pod_spec`) whose start command is
   ``python -m infra.pod_entrypoint -- <Prefect's flow-run command>`` and whose env is the job's env
   (Prefect API settings, flow-run id, ``OW_*``, user variables) plus ``TTL_HOURS``; the pod id
   becomes the run's infrastructure PID;
3. polls pod and flow run every ``poll_interval_seconds``, terminates the pod as soon as the run is
   final or cancelling, and marks the run Crashed if the pod vanishes or stops first, overruns
   ``max_run_hours``, or never starts the run (:mod:`infra.pod_outcome`).

On start and every ``OW_RUNPOD_SWEEP_INTERVAL_SECONDS`` (default 60) the worker also terminates its
pool's pods that no flow run needs any more (:mod:`infra.pod_sweep`), so a worker killed mid-run
leaves nothing billing behind once it is started again.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prefect.client.schemas.objects import StateType
from prefect.exceptions import InfrastructureNotFound, ObjectNotFound
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult
from pydantic import BaseModel, Field, field_validator

from blocks.runpod import RunPodCredentials
from infra.gpu_choice import CloudType
from infra.pod_launch import GpuCatalogue, LaunchedPod, launch_pod
from infra.pod_outcome import FlowRunPhase, PodPhase, Verdict, decide, flow_run_phase, pod_phase
from infra.pod_spec import (
    DEFAULT_GPU_TYPES,
    DEFAULT_IMAGE,
    POD_API_KEY_ENV,
    pod_env,
    pod_name_for,
    pod_start_command,
)
from infra.pod_sweep import sweep_orphaned_pods
from infra.runpod_api import Pod, PodSpec, RunPodApiError, RunPodClient

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.schemas.objects import FlowRun
    from prefect.logging.loggers import PrefectLogAdapter

SWEEP_INTERVAL_ENV = "OW_RUNPOD_SWEEP_INTERVAL_SECONDS"
_PORT = r"^\d{1,5}/(tcp|http|udp)$"


@dataclass(frozen=True)
class _FlowRunObservation:
    phase: FlowRunPhase
    state_type: StateType | None = None
    started: bool = False
    flow_run: FlowRun | None = None


class RunPodPodSettings(BaseModel):
    """The pod settings a ``runpod`` work pool exposes; shared by the job configuration and its variables."""

    image: str = Field(
        default=DEFAULT_IMAGE,
        description="Container image of the pod: infra/Dockerfile built and pushed to a registry RunPod can pull.",
    )
    gpu_types: list[str] = Field(
        default_factory=lambda: list(DEFAULT_GPU_TYPES),
        min_length=1,
        title="GPU types",
        description=(
            "RunPod GPU type ids the pool may use, most preferred first. Those with enough VRAM are tried "
            "cheapest first (ties in this order); when RunPod has none available the next is tried."
        ),
    )
    gpu_count: int = Field(default=1, ge=1, le=16, title="GPU count", description="GPUs per pod.")
    min_vram_gb: float = Field(
        default=0,
        ge=0,
        title="Minimum VRAM (GB)",
        description="The job's VRAM estimate in GB, spread over gpu_count GPUs; set per flow run by the job's flow.",
    )
    cloud_type: CloudType = Field(
        default="ALL",
        description="SECURE (RunPod data centres), COMMUNITY (hosts), or ALL (both, each tried at its own price).",
    )
    gpu_prices: dict[str, float] = Field(
        default_factory=dict,
        title="GPU prices (USD per GPU-hour)",
        description="Price per GPU type used to order candidates; types not listed use RunPod's current price.",
    )
    container_disk_gb: int = Field(default=50, ge=1, description="Container disk in GB (lost when the pod ends).")
    volume_gb: int = Field(default=0, ge=0, description="Pod volume in GB (0: none). It bills until the pod is terminated.")
    volume_mount_path: str = Field(default="/workspace", description="Where the pod volume or network volume is mounted.")
    network_volume_id: str | None = Field(default=None, description="RunPod network volume to attach (pins the data centre).")
    data_center_id: str | None = Field(default=None, description="RunPod data centre id, e.g. EU-RO-1; empty: any.")
    ports: list[str] = Field(default_factory=list, description='Ports to expose, e.g. ["22/tcp", "8000/http"].')
    allowed_cuda_versions: list[str] = Field(
        default_factory=list, title="Allowed CUDA versions", description='e.g. ["12.4", "12.6"]; empty: any.'
    )
    min_vcpu_count: int = Field(default=1, ge=1, title="Minimum vCPUs", description="Minimum vCPUs of the pod.")
    min_memory_gb: int = Field(default=1, ge=1, title="Minimum memory (GB)", description="Minimum system RAM in GB.")
    ttl_hours: float = Field(
        default=24,
        gt=0,
        title="TTL (hours)",
        description="The pod terminates itself this long after it starts, whatever happens (extend with `ow ttl`).",
    )
    max_run_hours: float | None = Field(
        default=None,
        gt=0,
        title="Maximum run time (hours)",
        description="The worker terminates the pod and crashes the run after this long; empty: no limit.",
    )
    pod_start_timeout_seconds: float = Field(
        default=1800,
        gt=0,
        description="Crash the run and terminate the pod if the flow run has not started this long after launch.",
    )
    poll_interval_seconds: float = Field(
        default=10, gt=0, description="How often the worker checks pod and flow run (also the delay before billing stops)."
    )
    runpod_credentials: RunPodCredentials | None = Field(
        default=None,
        title="RunPod credentials",
        description="The ow-runpod-credentials block of the account to launch pods in.",
    )

    @field_validator("gpu_types")
    @classmethod
    def _gpu_types_named(cls, value: list[str]) -> list[str]:
        if any(not gpu.strip() for gpu in value):
            raise ValueError("gpu_types holds an empty name; use RunPod ids such as 'NVIDIA A40'")
        return value

    @field_validator("ports")
    @classmethod
    def _ports_well_formed(cls, value: list[str]) -> list[str]:
        bad = [port for port in value if not re.match(_PORT, port)]
        if bad:
            raise ValueError(f"ports {bad} must look like '22/tcp' or '8000/http'")
        return value

    @field_validator("gpu_prices")
    @classmethod
    def _prices_not_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = {gpu: price for gpu, price in value.items() if price < 0}
        if negative:
            raise ValueError(f"gpu_prices must be 0 or more, got {negative}")
        return value


class RunPodJobConfiguration(BaseJobConfiguration, RunPodPodSettings):
    """One flow run's pod, as the work pool's template and the deployment's job variables make it."""


class RunPodVariables(BaseVariables, RunPodPodSettings):
    """The ``runpod`` work pool's variables (the pool's UI form); deployments override them in job_variables."""

    name: str | None = Field(
        default=None,
        description="Not used for pods: each is named ow-<work pool>-<flow run id> so a retried create finds it.",
    )


class RunPodWorkerResult(BaseWorkerResult):
    """``identifier`` is the pod id; ``status_code`` 0 when the run ended on its own, 1 when the worker crashed it."""


class RunPodWorker(BaseWorker[RunPodJobConfiguration, RunPodVariables, RunPodWorkerResult]):
    type = "runpod"
    job_configuration = RunPodJobConfiguration
    job_configuration_variables = RunPodVariables
    _display_name = "RunPod"
    _description = "Run each flow run in its own RunPod GPU pod, cheapest fitting GPU first, with a TTL safety net."
    _documentation_url = "https://docs.runpod.io/pods/overview"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._gpu_catalogue = GpuCatalogue()
        self._watched_pod_ids: set[str] = set()
        self._credentials_in_use: dict[str, RunPodCredentials] = {}
        self._sweep_scope: anyio.CancelScope | None = None

    async def setup(self) -> None:
        await super().setup()
        self._sweep_scope = anyio.CancelScope()
        assert self._runs_task_group is not None
        self._runs_task_group.start_soon(self._sweep_orphaned_pods_periodically)

    async def teardown(self, *exc_info: Any) -> None:
        if self._sweep_scope is not None:
            self._sweep_scope.cancel()
        await super().teardown(*exc_info)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: RunPodJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> RunPodWorkerResult:
        logger = self.get_flow_run_logger(flow_run)
        client = self._runpod_client(configuration)
        launched = await self._launch_pod(flow_run, configuration, client, logger)
        self._watched_pod_ids.add(launched.pod_id)
        try:
            (task_status or anyio.TASK_STATUS_IGNORED).started(launched.pod_id)
            return await self._watch_pod(flow_run, configuration, client, launched, logger)
        finally:
            self._watched_pod_ids.discard(launched.pod_id)

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: RunPodJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        """Terminate the pod (RunPod has no graceful terminate: its processes get SIGTERM, then SIGKILL)."""
        client = self._runpod_client(configuration)
        terminated = await anyio.to_thread.run_sync(client.terminate_pod, infrastructure_pid)
        if not terminated:
            raise InfrastructureNotFound(f"RunPod pod {infrastructure_pid!r} was not found; it may already be terminated.")

    # -- launching -----------------------------------------------------------------------------------

    def _runpod_client(self, configuration: RunPodJobConfiguration) -> RunPodClient:
        credentials = configuration.runpod_credentials
        if credentials is None:
            raise ValueError(
                "The runpod_credentials job variable is not set: save an ow-runpod-credentials block and select it "
                f"in work pool {self._work_pool_name!r} (or in the deployment's job_variables)."
            )
        fingerprint = hashlib.sha256(
            f"{credentials.api_key.get_secret_value()}\0{credentials.api_base_url}".encode()
        ).hexdigest()
        self._credentials_in_use.setdefault(fingerprint, credentials)
        return RunPodClient.from_credentials(credentials)

    async def _launch_pod(
        self, flow_run: FlowRun, configuration: RunPodJobConfiguration, client: RunPodClient, logger: PrefectLogAdapter
    ) -> LaunchedPod:
        name = pod_name_for(self._work_pool_name, flow_run.id)
        stale = await anyio.to_thread.run_sync(client.find_pod_by_name, name)
        if stale is not None:
            # Only an earlier attempt of this flow run can own the name; its work is over.
            logger.warning("Terminating pod %s left from an earlier attempt of this flow run", stale.id)
            await anyio.to_thread.run_sync(client.terminate_pod, stale.id)
        if POD_API_KEY_ENV in configuration.env:
            logger.warning("Dropped %s from the pod env: RunPod gives each pod its own key", POD_API_KEY_ENV)
        plan = await anyio.to_thread.run_sync(
            lambda: self._gpu_catalogue.plan(
                client,
                preferences=configuration.gpu_types,
                min_vram_gb=configuration.min_vram_gb,
                gpu_count=configuration.gpu_count,
                cloud_type=configuration.cloud_type,
                price_overrides=configuration.gpu_prices,
            )
        )
        spec = PodSpec(
            name=name,
            image=configuration.image,
            gpu_count=configuration.gpu_count,
            container_disk_gb=configuration.container_disk_gb,
            volume_gb=configuration.volume_gb,
            volume_mount_path=configuration.volume_mount_path,
            network_volume_id=configuration.network_volume_id,
            data_center_id=configuration.data_center_id,
            ports=configuration.ports,
            env=pod_env(
                configuration.env,
                ttl_hours=configuration.ttl_hours,
                work_pool_name=self._work_pool_name,
                api_base_url=client.api_base_url,
            ),
            docker_args=pod_start_command(configuration.command or "prefect flow-run execute"),
            allowed_cuda_versions=configuration.allowed_cuda_versions,
            min_vcpu_count=configuration.min_vcpu_count,
            min_memory_gb=configuration.min_memory_gb,
        )
        launched = await anyio.to_thread.run_sync(
            lambda: launch_pod(client, spec, plan, exclude_ids={stale.id} if stale else (), report=logger.info)
        )
        logger.info("Launched RunPod pod %s (%s) on %s", launched.pod_id, name, launched.candidate.describe())
        return launched

    # -- watching ------------------------------------------------------------------------------------

    async def _watch_pod(
        self,
        flow_run: FlowRun,
        configuration: RunPodJobConfiguration,
        client: RunPodClient,
        launched: LaunchedPod,
        logger: PrefectLogAdapter,
    ) -> RunPodWorkerResult:
        launched_at = time.monotonic()
        last_seen: Pod | None = None
        reported_up = False
        max_run_seconds = configuration.max_run_hours * 3600 if configuration.max_run_hours else None
        while True:
            await anyio.sleep(configuration.poll_interval_seconds)
            # Pod first, flow run second: a pod gone because its run just finished is then always seen
            # together with the run's final state (see pod_outcome.decide).
            try:
                pod = await anyio.to_thread.run_sync(client.get_pod, launched.pod_id)
                observed_pod = pod_phase(pod)
            except RunPodApiError as exc:
                logger.warning("Cannot read pod %s from RunPod (%s); will look again", launched.pod_id, exc)
                pod, observed_pod = None, PodPhase.UNKNOWN
            if pod is not None:
                last_seen = pod
                if pod.runtime_up and not reported_up:
                    reported_up = True
                    logger.info("Pod %s is up; the flow run starts inside it", launched.pod_id)
            run = await self._observe_flow_run(flow_run.id)
            verdict = decide(
                observed_pod,
                run.phase,
                flow_run_started=run.started,
                seconds_since_launch=time.monotonic() - launched_at,
                max_run_seconds=max_run_seconds,
                start_timeout_seconds=configuration.pod_start_timeout_seconds,
            )
            if verdict is Verdict.KEEP_WATCHING:
                continue
            return await self._conclude(
                verdict, flow_run, configuration, client, launched, last_seen, observed_pod, run.state_type,
                time.monotonic() - launched_at, logger,
            )

    async def _observe_flow_run(self, flow_run_id: UUID) -> _FlowRunObservation:
        try:
            current = await self.client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return _FlowRunObservation(FlowRunPhase.DELETED)
        except Exception as exc:  # noqa: BLE001 - the API may be briefly away; look again next poll
            self._logger.warning("Cannot read flow run %s (%s); will look again", flow_run_id, exc)
            return _FlowRunObservation(FlowRunPhase.UNKNOWN)
        state_type = current.state.type if current.state else None
        return _FlowRunObservation(flow_run_phase(state_type), state_type, current.start_time is not None, current)

    async def _conclude(
        self,
        verdict: Verdict,
        flow_run: FlowRun,
        configuration: RunPodJobConfiguration,
        client: RunPodClient,
        launched: LaunchedPod,
        last_seen: Pod | None,
        observed_pod: PodPhase,
        state_type: StateType | None,
        seconds_since_launch: float,
        logger: PrefectLogAdapter,
    ) -> RunPodWorkerResult:
        """Act on a verdict: terminate the pod in every case (billing stops), then settle the run's state."""
        pod_id = launched.pod_id
        try:
            if await anyio.to_thread.run_sync(client.terminate_pod, pod_id):
                logger.info("Terminated RunPod pod %s (%s)", pod_id, verdict.value.replace("_", " "))
        except RunPodApiError as exc:
            logger.error("Could not terminate pod %s (%s); the worker's orphan sweep will retry", pod_id, exc)

        if verdict is Verdict.CANCEL:
            # The pod's own engine would have moved Cancelling to Cancelled; it is gone now.
            current = await self._observe_flow_run(flow_run.id)
            if current.phase is FlowRunPhase.CANCELLING and current.flow_run is not None:
                await self._mark_flow_run_as_cancelled(
                    current.flow_run, state_updates={"message": f"Cancelled; RunPod pod {pod_id} was terminated."}
                )
            logger.info("Flow run cancelled; RunPod pod %s terminated", pod_id)
        if not verdict.crashes_run:
            return RunPodWorkerResult(identifier=pod_id, status_code=0)

        last_status = last_seen.describe() if last_seen is not None else "never seen running"
        where = launched.candidate.describe()
        if verdict is Verdict.POD_LOST:
            what = "disappeared" if observed_pod is PodPhase.GONE else "stopped"
            state_name = state_type.value.title() if state_type else "active"
            message = f"RunPod pod {pod_id} on {where} {what} while the flow run was {state_name}; last known status {last_status}."
            if seconds_since_launch >= configuration.ttl_hours * 3600:
                message += f" It had reached its TTL of {configuration.ttl_hours:g} h (ttl_hours)."
            else:
                message += " It was terminated outside Prefect, or its container crashed."
        elif verdict is Verdict.MAX_RUN_TIME:
            message = (
                f"The flow run exceeded max_run_hours={configuration.max_run_hours:g}; RunPod pod {pod_id} on {where} "
                f"was terminated (last known status {last_status})."
            )
        else:
            message = (
                f"RunPod pod {pod_id} on {where} did not start the flow run within "
                f"pod_start_timeout_seconds={configuration.pod_start_timeout_seconds:g} (last known status {last_status}); "
                "it was terminated."
            )
        await self._propose_crashed_state(flow_run, message)
        return RunPodWorkerResult(identifier=pod_id, status_code=1)

    # -- orphan sweep --------------------------------------------------------------------------------

    async def _sweep_orphaned_pods_periodically(self) -> None:
        interval = float(os.environ.get(SWEEP_INTERVAL_ENV) or 60)
        assert self._sweep_scope is not None
        with self._sweep_scope:
            while True:
                if self._work_pool is None:  # not synced with the API yet
                    await anyio.sleep(1)
                    continue
                try:
                    await self._sweep_orphaned_pods()
                except Exception:  # noqa: BLE001 - a failed sweep must not stop the worker
                    self._logger.exception("Orphaned-pod sweep failed; retrying in %g s", interval)
                await anyio.sleep(interval)

    async def _sweep_orphaned_pods(self) -> None:
        pool_default = await RunPodJobConfiguration.from_template_and_values(
            base_job_template=self.work_pool.base_job_template, values={}, client=self.client
        )
        if pool_default.runpod_credentials is not None:
            self._runpod_client(pool_default)  # registers the pool's account for sweeping
        for credentials in list(self._credentials_in_use.values()):
            await sweep_orphaned_pods(
                runpod_client=RunPodClient.from_credentials(credentials),
                prefect_client=self.client,
                work_pool_name=self._work_pool_name,
                watched_pod_ids=set(self._watched_pod_ids),
                logger=self._logger,
            )

