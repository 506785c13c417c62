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
   cheapest first (:mod:`infra.runpod.gpu_choice`), and on "no instances available" tries the next; when
   all are exhausted the run ends Crashed with a message listing every attempt;
2. creates one pod named ``ow-<pool>-<flow run id>`` (:mod:`infra.worker.pod_spec`) whose start command is
   ``python -m infra.pod.entrypoint -- <Prefect's flow-run command>`` and whose env is the job's env
   (Prefect API settings, flow-run id, ``OW_*``, user variables) plus ``TTL_HOURS``; the pod id
   becomes the run's infrastructure PID;
3. polls pod and flow run every ``poll_interval_seconds``, terminates the pod as soon as the run is
   final or cancelling, and marks the run Crashed if the pod vanishes or stops first, overruns
   ``max_run_hours``, or never starts the run (:mod:`infra.worker.pod_outcome`).

On start and every ``OW_RUNPOD_SWEEP_INTERVAL_SECONDS`` (default 60) the worker also terminates its
pool's pods that no flow run needs any more (:mod:`infra.worker.pod_sweep`), so a worker killed mid-run
leaves nothing billing behind once it is started again.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import httpx
from prefect.client.schemas.objects import StateType
from prefect.exceptions import InfrastructureNotFound, ObjectNotFound
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult
from pydantic import Field

from blocks.runpod import RunPodCredentials
from infra.runpod.api import RunPodApiError, RunPodClient
from infra.runpod.launch import GpuCatalogue, LaunchedPod, launch_pod
from infra.runpod.models import PodSpec
from infra.worker.pod_outcome import (
    FlowRunPhase,
    PodPhase,
    PodWatch,
    Verdict,
    crash_message,
    decide,
    flow_run_phase,
    pod_phase,
)
from infra.worker.pod_spec import POD_API_KEY_ENV, pod_env, pod_name_for, pod_start_command
from infra.worker.pod_sweep import sweep_orphaned_pods
from infra.worker.pool_settings import RunPodPodSettings

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.schemas.objects import FlowRun
    from prefect.logging.loggers import PrefectLogAdapter

SWEEP_INTERVAL_ENV = "OW_RUNPOD_SWEEP_INTERVAL_SECONDS"
# How long after terminating a cancelled run's pod the worker keeps its Cancelled state: RunPod sends
# SIGTERM, then SIGKILL, and an engine that reports its own end in between reports Crashed.
CANCEL_SETTLE_SECONDS = 20.0


@dataclass(frozen=True)
class _FlowRunObservation:
    phase: FlowRunPhase
    state_type: StateType | None = None
    started: bool = False
    flow_run: FlowRun | None = None


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
    _description = (
        "Run each flow run in its own RunPod GPU pod, cheapest fitting GPU first, with a TTL safety net."
    )
    _documentation_url = "https://docs.runpod.io/pods/overview"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._gpu_catalogue = GpuCatalogue()
        self._watched_pod_ids: set[str] = set()
        self._credentials_in_use: dict[str, RunPodCredentials] = {}
        self._sweep_scope: anyio.CancelScope | None = None

    async def setup(self) -> None:
        interval = _sweep_interval_seconds()  # a bad setting stops the worker before it takes runs
        await super().setup()
        self._sweep_scope = anyio.CancelScope()
        assert self._runs_task_group is not None
        self._runs_task_group.start_soon(self._sweep_orphaned_pods_periodically, interval)

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
            raise InfrastructureNotFound(
                f"RunPod pod {infrastructure_pid!r} was not found; it may already be terminated."
            )

    async def _give_worker_labels_to_flow_run(self, flow_run_id: UUID) -> None:
        # BaseWorker sets these attribution labels before calling run() and crashes the run when that
        # fails. A Prefect API under write contention (SQLite answers 503 "database is locked") must not
        # cost a flow run over labels alone: log it and launch the pod anyway.
        try:
            await super()._give_worker_labels_to_flow_run(flow_run_id)
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code < 500:
                raise
            self._logger.warning(
                "Could not label flow run %s with this worker (%s); continuing", flow_run_id, exc
            )

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
        self,
        flow_run: FlowRun,
        configuration: RunPodJobConfiguration,
        client: RunPodClient,
        logger: PrefectLogAdapter,
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
            lambda: launch_pod(
                client, spec, plan, exclude_ids={stale.id} if stale else (), report=logger.info
            )
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
        watch = PodWatch(pod_id=launched.pod_id, placement=launched.candidate.describe())
        launched_at = time.monotonic()
        max_run_seconds = configuration.max_run_hours * 3600 if configuration.max_run_hours else None
        while True:
            await anyio.sleep(configuration.poll_interval_seconds)
            # Pod first, flow run second: a pod gone because its run just finished is then always seen
            # together with the run's final state (see pod_outcome.decide).
            await self._observe_pod(client, watch, logger)
            run = await self._observe_flow_run(flow_run.id)
            watch.flow_run_state = run.state_type
            verdict = decide(
                watch.pod,
                run.phase,
                flow_run_started=run.started,
                seconds_since_launch=time.monotonic() - launched_at,
                max_run_seconds=max_run_seconds,
                start_timeout_seconds=configuration.pod_start_timeout_seconds,
            )
            if verdict is not Verdict.KEEP_WATCHING:
                return await self._conclude(
                    verdict, flow_run, configuration, client, watch, time.monotonic() - launched_at, logger
                )

    async def _observe_pod(self, client: RunPodClient, watch: PodWatch, logger: PrefectLogAdapter) -> None:
        try:
            pod = await anyio.to_thread.run_sync(client.get_pod, watch.pod_id)
        except RunPodApiError as exc:
            logger.warning("Cannot read pod %s from RunPod (%s); will look again", watch.pod_id, exc)
            watch.observe(None, PodPhase.UNKNOWN)
            return
        was_up = watch.last_seen is not None and watch.last_seen.runtime_up
        watch.observe(pod, pod_phase(pod))
        if pod is not None and pod.runtime_up and not was_up:
            logger.info("Pod %s is up; the flow run starts inside it", watch.pod_id)

    async def _observe_flow_run(self, flow_run_id: UUID) -> _FlowRunObservation:
        try:
            current = await self.client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return _FlowRunObservation(FlowRunPhase.DELETED)
        except Exception as exc:  # noqa: BLE001 - the API may be briefly away; look again next poll
            self._logger.warning("Cannot read flow run %s (%s); will look again", flow_run_id, exc)
            return _FlowRunObservation(FlowRunPhase.UNKNOWN)
        state_type = current.state.type if current.state else None
        return _FlowRunObservation(
            flow_run_phase(state_type), state_type, current.start_time is not None, current
        )

    async def _keep_cancelled(self, flow_run_id: UUID, message: str) -> None:
        """Mark a Cancelling run Cancelled, or a cancelled run its dying engine marked Crashed."""
        current = await self._observe_flow_run(flow_run_id)
        if current.flow_run is not None and current.state_type in (StateType.CANCELLING, StateType.CRASHED):
            await self._mark_flow_run_as_cancelled(current.flow_run, state_updates={"message": message})

    async def _conclude(
        self,
        verdict: Verdict,
        flow_run: FlowRun,
        configuration: RunPodJobConfiguration,
        client: RunPodClient,
        watch: PodWatch,
        seconds_since_launch: float,
        logger: PrefectLogAdapter,
    ) -> RunPodWorkerResult:
        """Act on a verdict: terminate the pod in every case (billing stops) and settle the run's state.

        A cancelled run is marked Cancelled before its pod is terminated, and kept Cancelled while the
        pod goes down: an engine started without Prefect's runner (which handles cancellation itself)
        sees only SIGTERM and forces Crashed, though what ended it was the user's cancellation.
        """
        pod_id = watch.pod_id
        cancelled_message = f"Cancelled; the worker is terminating RunPod pod {pod_id}."
        if verdict is Verdict.CANCEL:
            await self._keep_cancelled(flow_run.id, cancelled_message)
        try:
            if await anyio.to_thread.run_sync(client.terminate_pod, pod_id):
                logger.info("Terminated RunPod pod %s (%s)", pod_id, verdict.value.replace("_", " "))
        except RunPodApiError as exc:
            logger.error("Could not terminate pod %s (%s); the worker's orphan sweep will retry", pod_id, exc)
        if verdict is Verdict.CANCEL:
            logger.info("Flow run cancelled; RunPod pod %s terminated", pod_id)
            with anyio.move_on_after(CANCEL_SETTLE_SECONDS):
                while True:
                    await anyio.sleep(configuration.poll_interval_seconds)
                    await self._keep_cancelled(flow_run.id, cancelled_message)
        if not verdict.crashes_run:
            return RunPodWorkerResult(identifier=pod_id, status_code=0)
        message = crash_message(
            verdict,
            watch,
            seconds_since_launch=seconds_since_launch,
            ttl_hours=configuration.ttl_hours,
            max_run_hours=configuration.max_run_hours,
            start_timeout_seconds=configuration.pod_start_timeout_seconds,
        )
        await self._propose_crashed_state(flow_run, message)
        return RunPodWorkerResult(identifier=pod_id, status_code=1)

    # -- orphan sweep --------------------------------------------------------------------------------

    async def _sweep_orphaned_pods_periodically(self, interval: float) -> None:
        assert self._sweep_scope is not None
        with self._sweep_scope:
            while True:
                if self._work_pool is None:  # not synced with the API yet
                    await anyio.sleep(1)
                    continue
                await self._sweep_orphaned_pods()
                await anyio.sleep(interval)

    async def _sweep_orphaned_pods(self) -> None:
        """Sweep every RunPod account this worker has used, starting with the pool's default one."""
        try:
            pool_default = await RunPodJobConfiguration.from_template_and_values(
                base_job_template=self.work_pool.base_job_template, values={}, client=self.client
            )
            if pool_default.runpod_credentials is not None:
                self._runpod_client(pool_default)  # registers the pool's account for sweeping
        except Exception as exc:  # noqa: BLE001 - still sweep the accounts already known
            self._logger.warning("Cannot read the work pool's default RunPod credentials: %s", exc)
        for credentials in list(self._credentials_in_use.values()):
            try:
                await sweep_orphaned_pods(
                    runpod_client=RunPodClient.from_credentials(credentials),
                    prefect_client=self.client,
                    work_pool_name=self._work_pool_name,
                    watched_pod_ids=set(self._watched_pod_ids),
                    logger=self._logger,
                )
            except Exception as exc:  # noqa: BLE001 - a failed sweep must not stop the worker
                self._logger.warning("Orphaned-pod sweep failed (%s); it runs again later", exc)


def _sweep_interval_seconds() -> float:
    raw = os.environ.get(SWEEP_INTERVAL_ENV, "").strip() or "60"
    try:
        interval = float(raw)
    except ValueError:
        interval = -1.0
    if not interval > 0:
        raise ValueError(f"{SWEEP_INTERVAL_ENV}={raw!r} must be a number of seconds greater than 0")
    return interval
