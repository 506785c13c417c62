"""The ``runpod`` worker: each flow run of a work pool runs in its own RunPod GPU pod.

To start one::

    prefect work-pool create gpu --type runpod
    prefect worker start --pool gpu --type runpod

then point the pool's ``runpod_credentials`` variable at a saved ``ow-runpod-credentials`` block
(UI: work pool → Edit; or per deployment, ``job_variables: {runpod_credentials:
"{{ prefect.blocks.ow-runpod-credentials.my-account }}"}``). The worker type is registered through the
``prefect.collections`` entry point of this project, so installing the project is all it takes.

It speaks RunPod's REST API v2 (:mod:`infra.runpod.api`). Per flow run the worker:

1. reads RunPod's catalog with stock and plans the hardware: the job's ``allowed_hardware`` or the
   pool's ``gpu_types`` × ``gpu_count``, those with at least ``min_vram_gb / gpu_count`` GB each, in
   stock first, cheapest first (:mod:`infra.runpod.gpu_choice`), and on "no instances available" tries
   the next;
2. when nothing fitting can be had, puts the run back as ``Scheduled`` (``AwaitingCapacity``, with a
   message naming what it waits for) and tries again with backoff for up to ``capacity_wait_minutes``;
   a 402 (balance, spending limit) pauses the pool's launches the same way
   (:mod:`infra.runpod.capacity`); only an exhausted wait ends the run, listing what was tried;
3. creates one pod named ``ow-<pool>-<flow run id>`` (name and env derived in the job configuration's
   ``prepare_for_flow_run``, :mod:`infra.worker.pod_spec`) whose start command is
   ``python -m infra.pod.entrypoint -- <Prefect's flow-run command>``; the pod id becomes the run's
   infrastructure PID;
4. polls pod and flow run every ``poll_interval_seconds``; when the run reaches a final state it gives
   the pod ``final_state_grace_seconds`` to end itself (its entrypoint does so when the engine exits,
   after the engine has sent its last logs) before terminating it, and never lets a crash reported
   after the final state replace it; it terminates the pod at once on cancellation, and marks the run
   Crashed if the pod vanishes, stops or fails first, overruns ``max_run_hours``, or never starts the
   run (:mod:`infra.worker.pod_outcome`);
5. records what the pod costs, as a table artifact on the flow run (:mod:`tasks.cost_ledger`), from
   which the control tier sums the job's cost: open as soon as the pod exists (GPU type and count,
   cloud, hourly price at launch, creation time and bound), and closed once the pod is gone, whatever
   the outcome (seconds from create to gone, and RunPod's billed total where ``GET /v2/billing/pods``
   answers; :mod:`infra.worker.pod_charge`).

On start and every ``OW_RUNPOD_SWEEP_INTERVAL_SECONDS`` (default 60) the worker also terminates the
pool's pods that no flow run needs any more, or that overran the bounds written on them at launch
(:mod:`infra.worker.pod_sweep`), in every RunPod account the pool or its deployments use, so a worker
killed mid-run leaves nothing billing behind once any worker of the pool is running; and it closes the
open charges of the pool's pods that it terminated or found gone with no worker watching them
(:mod:`infra.worker.open_charges`), so the ledger learns what they cost.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import httpx
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, WorkPoolFilter, WorkPoolFilterName
from prefect.client.schemas.objects import StateType
from prefect.events import emit_event
from prefect.exceptions import Abort, InfrastructureNotFound, ObjectNotFound
from prefect.states import Crashed, Scheduled
from prefect.utilities.engine import propose_state
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult
from pydantic import Field

from blocks.runpod import RunPodCredentials
from infra.bounds import DEFAULT_TTL_HOURS, SWEEP_INTERVAL_SECONDS_MAX, parse_bounded_positive
from infra.runpod.api import RunPodApiError, RunPodBillingBlocked, RunPodClient
from infra.runpod.capacity import (
    AWAITING_CAPACITY,
    LaunchGate,
    capacity_wait_started,
    capacity_waits_so_far,
    decide_capacity_wait,
)
from infra.runpod.hardware import HardwareOption, parse_allowed_hardware
from infra.runpod.launch import GpuCatalogue, LaunchedPod, NoGpuAvailable, launch_pod
from infra.runpod.models import Pod, PodSpec
from infra.runpod.pod_reads import PodListCache
from infra.worker.flow_run_reads import FlowRunReads
from infra.worker.open_charges import close_open_charges, read_pod_bill, window_start
from infra.worker.pod_charge import describe_charge, longest_pod_hours, pod_bound, pod_charge, pod_created_at
from infra.worker.pod_outcome import (
    FlowRunPhase,
    PodPhase,
    PodWatch,
    Verdict,
    crash_message,
    decide,
    engine_crash_message,
    flow_run_phase,
    pod_phase,
)
from infra.worker.pod_spec import (
    POD_API_KEY_ENV,
    belongs_to_pool,
    pod_env,
    pod_name_for,
    pod_start_command,
)
from infra.worker.pod_sweep import sweep_orphaned_pods
from infra.worker.pool_settings import RunPodPodSettings
from jobs.costs import PodCharge
from tasks.cost_ledger import charge_artifact

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.schemas.objects import FlowRun, State
    from prefect.logging.loggers import PrefectLogAdapter

SWEEP_INTERVAL_ENV = "OW_RUNPOD_SWEEP_INTERVAL_SECONDS"
# How long the worker reuses RunPod's catalog (stock and prices) between launches: RunPod's rate limit
# is per minute, and a sweep of hundreds of runs would otherwise read it twice per launch.
CATALOG_MAX_AGE_ENV = "OW_RUNPOD_CATALOG_MAX_AGE_SECONDS"
# How long after terminating a cancelled run's pod the worker keeps its Cancelled state: RunPod sends
# SIGTERM, then SIGKILL, and an engine that reports its own end in between reports Crashed.
CANCEL_SETTLE_SECONDS = 20.0
# How long after the pod goes the worker keeps watching for a crash reported over a final state.
FINAL_STATE_SETTLE_SECONDS = 5.0
# How soon the worker puts its Crashed account back over an engine's bare crash report (a user's
# --watch may read the state in between).
INSIST_POLL_SECONDS = 0.25
EVENT_PREFIX = "ow.runpod"


class CapacityUnavailable(RuntimeError):
    """Nothing could be launched now; the message says why (stock, cooldowns, billing)."""


@dataclass(frozen=True)
class _FlowRunObservation:
    phase: FlowRunPhase
    state_type: StateType | None = None
    started: bool = False
    flow_run: FlowRun | None = None


class RunPodJobConfiguration(BaseJobConfiguration, RunPodPodSettings):
    """One flow run's pod, as the work pool's template and the deployment's job variables make it."""

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: Any = None,
        flow: Any = None,
        work_pool: Any = None,
        worker_name: str | None = None,
        worker_id: Any = None,
    ) -> None:  # noqa: E501 - Prefect's signature
        """Prefect's env, then the pod's: its one name and the env it gets (see :func:`pod_env`).

        Prefect puts every explicitly set setting of the worker into the env; the pod keeps only those
        it needs, because RunPod shows a pod's env to anyone with access to the account's console.
        """
        set_in_job_variables = {key for key, value in (self.env or {}).items() if value is not None}
        super().prepare_for_flow_run(flow_run, deployment, flow, work_pool, worker_name, worker_id)
        pool_name = work_pool.name if work_pool is not None else (flow_run.work_pool_name or "pool")
        self.name = pod_name_for(pool_name, flow_run.id)
        credentials = self.runpod_credentials
        self.env = pod_env(
            self.env,
            ttl_hours=self.ttl_hours,
            work_pool_name=pool_name,
            api_base_url=credentials.api_base_url if credentials else None,
            start_timeout_seconds=self.pod_start_timeout_seconds,
            max_run_hours=self.max_run_hours,
            set_in_job_variables=set_in_job_variables,
        )

    def hardware_options(self) -> list[HardwareOption]:
        """The job's ``allowed_hardware`` when it names any, else the pool's types × ``gpu_count``."""
        if self.allowed_hardware:
            return parse_allowed_hardware(self.allowed_hardware)
        return [HardwareOption(gpu_count=self.gpu_count, gpu_type_ids=tuple(self.gpu_types))]


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
        "Run each flow run in its own RunPod GPU pod, in-stock and cheapest GPU first, with a TTL safety net."
    )
    _documentation_url = "https://docs.runpod.io/pods/overview"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._gpu_catalogue = GpuCatalogue(
            max_age_s=parse_bounded_positive(
                os.environ.get(CATALOG_MAX_AGE_ENV),
                name=CATALOG_MAX_AGE_ENV,
                default=20.0,
                maximum=600.0,
                allow_zero=True,
            )
        )
        self._launch_gate = LaunchGate()
        self._watched_pod_ids: set[str] = set()
        self._clients: dict[str, RunPodClient] = {}
        self._pod_lists: dict[RunPodClient, PodListCache] = {}  # one per client, so per account
        self._flow_run_reads: FlowRunReads | None = None  # every watch's flow-run reads, shared
        self._sweep_scope: anyio.CancelScope | None = None
        # The longest a pod of the pool may run, as its defaults and deployments bound it (each sweep).
        self._longest_pod_hours = DEFAULT_TTL_HOURS

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
        for client in self._clients.values():
            client.close()

    async def run(
        self,
        flow_run: FlowRun,
        configuration: RunPodJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> RunPodWorkerResult:
        logger = self.get_flow_run_logger(flow_run)
        client = self._runpod_client(configuration)
        try:
            launched = await self._launch_pod(flow_run, configuration, client, logger)
        except CapacityUnavailable as exc:
            if await self._wait_for_capacity(flow_run, configuration, str(exc), logger):
                (task_status or anyio.TASK_STATUS_IGNORED).started("")
                return RunPodWorkerResult(identifier="", status_code=0)
            raise
        created_at = pod_created_at(launched.pod.created_at if launched.pod else None, time.time())
        self._watched_pod_ids.add(launched.pod_id)
        self._shared_flow_run_reads().watch(flow_run.id)
        try:
            (task_status or anyio.TASK_STATUS_IGNORED).started(launched.pod_id)
            # Open at once: should this worker die before the pod ends, whoever finds the pod closes it.
            await self._write_charge(
                self._charge_of(flow_run, configuration, launched, created_at=created_at, ended_at=None),
                logger,
            )
            return await self._watch_pod(flow_run, configuration, client, launched, created_at, logger)
        finally:
            self._watched_pod_ids.discard(launched.pod_id)
            self._shared_flow_run_reads().unwatch(flow_run.id)

    def _shared_flow_run_reads(self) -> FlowRunReads:
        """The worker's one :class:`FlowRunReads`, made on first use (``self.client`` exists by then)."""
        if self._flow_run_reads is None:

            async def read_many(ids: list[UUID]) -> list[FlowRun]:
                return await self.client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
                )

            self._flow_run_reads = FlowRunReads(read_many, self.client.read_flow_run)
        return self._flow_run_reads

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: RunPodJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        """Terminate the pod, if this pool launched it (RunPod has no graceful terminate: its
        processes get SIGTERM, then SIGKILL). An infrastructure PID naming any other pod of the
        account — set by hand through the API, say — is refused, not terminated."""
        client = self._runpod_client(configuration)
        pod = await anyio.to_thread.run_sync(client.get_pod, infrastructure_pid)
        if pod is None:
            raise InfrastructureNotFound(
                f"RunPod pod {infrastructure_pid!r} was not found; it may already be terminated."
            )
        if not belongs_to_pool(pod, self._work_pool_name):
            raise InfrastructureNotFound(
                f"RunPod pod {infrastructure_pid!r} ({pod.name!r}) was not launched by work pool "
                f"{self._work_pool_name!r}; refusing to terminate it."
            )
        await anyio.to_thread.run_sync(client.terminate_pod, infrastructure_pid)

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
        return self._client_for(credentials)

    def _client_for(self, credentials: RunPodCredentials) -> RunPodClient:
        """One client per account (and API address): it keeps its connections and rate-limit state,
        and the sweep covers every account a run of this worker used."""
        fingerprint = hashlib.sha256(
            f"{credentials.api_key.get_secret_value()}\0{credentials.api_base_url}".encode()
        ).hexdigest()
        if fingerprint not in self._clients:
            self._clients[fingerprint] = RunPodClient.from_credentials(credentials)
            self._pod_lists[self._clients[fingerprint]] = PodListCache(self._clients[fingerprint])
        return self._clients[fingerprint]

    async def _launch_pod(
        self,
        flow_run: FlowRun,
        configuration: RunPodJobConfiguration,
        client: RunPodClient,
        logger: PrefectLogAdapter,
    ) -> LaunchedPod:
        paused = self._launch_gate.billing_pause()
        if paused is not None:
            raise CapacityUnavailable(f"launches of this pool are paused: {paused}")
        name = configuration.name or pod_name_for(self._work_pool_name, flow_run.id)
        stale = await anyio.to_thread.run_sync(client.find_pod_by_name, name)
        if stale is not None:
            # Only an earlier attempt of this flow run can own the name; its work is over.
            logger.warning("Terminating pod %s left from an earlier attempt of this flow run", stale.id)
            await anyio.to_thread.run_sync(client.terminate_pod, stale.id)
        if POD_API_KEY_ENV in configuration.env:
            logger.warning("Dropped %s from the pod env: RunPod gives each pod its own key", POD_API_KEY_ENV)
        options = configuration.hardware_options()
        plan = await anyio.to_thread.run_sync(
            lambda: self._gpu_catalogue.plan(
                client,
                options=options,
                min_vram_gb=configuration.min_vram_gb,
                cloud_type=configuration.cloud_type,
                price_overrides=configuration.gpu_prices,
            )
        )
        plan = plan.without(self._launch_gate.cooling_down())
        spec = PodSpec(
            name=name,
            image=configuration.image,
            container_disk_gb=configuration.container_disk_gb,
            volume_gb=configuration.volume_gb,
            volume_mount_path=configuration.volume_mount_path,
            network_volume_id=configuration.network_volume_id,
            data_center_ids=[configuration.data_center_id] if configuration.data_center_id else [],
            ports=configuration.ports,
            env={
                key: value
                for key, value in configuration.env.items()
                if value is not None and key != POD_API_KEY_ENV
            },
            args=pod_start_command(configuration.command or "prefect flow-run execute"),
            allowed_cuda_versions=configuration.allowed_cuda_versions,
        )
        try:
            launched = await anyio.to_thread.run_sync(
                lambda: launch_pod(
                    client, spec, plan, exclude_ids={stale.id} if stale else (), report=logger.info
                )
            )
        except RunPodBillingBlocked as exc:
            reason = f"RunPod refused to create pods for this account ({exc.detail or exc})"
            if self._launch_gate.pause_for_billing(reason, configuration.capacity_retry_seconds):
                self._emit_pool_event("launches.paused", reason)
                logger.error("Pausing launches of work pool %s: %s", self._work_pool_name, reason)
            raise CapacityUnavailable(f"launches of this pool are paused: {reason}") from None
        except NoGpuAvailable as exc:
            for candidate, outcome in exc.attempts:
                if outcome == "no instances available":
                    self._launch_gate.capacity_failed(candidate.gpu_type_id, candidate.cloud_type)
            self._gpu_catalogue.forget()
            if not exc.waiting_can_help:
                raise
            raise CapacityUnavailable(str(exc)) from None
        if self._launch_gate.launched(launched.candidate.gpu_type_id, launched.candidate.cloud_type):
            self._emit_pool_event("launches.resumed", "a pod was created again")
            logger.info("Launches of work pool %s resumed", self._work_pool_name)
        logger.info("Launched RunPod pod %s (%s) on %s", launched.pod_id, name, launched.candidate.describe())
        return launched

    async def _wait_for_capacity(
        self, flow_run: FlowRun, configuration: RunPodJobConfiguration, why: str, logger: PrefectLogAdapter
    ) -> bool:
        """Put the run back as Scheduled (``AwaitingCapacity``) with backoff; False once the pool's
        ``capacity_wait_minutes`` are spent (the run then ends with ``why``)."""
        try:
            states = await self.client.read_flow_run_states(flow_run.id)
        except Exception as exc:  # noqa: BLE001 - without history, count this as the first wait
            logger.warning("Cannot read the run's state history (%s)", exc)
            states = []
        history = [(state.name, state.timestamp) for state in states]
        now = dt.datetime.now(dt.UTC)
        decision = decide_capacity_wait(
            now=now,
            wait_started=capacity_wait_started(history),
            waits_so_far=capacity_waits_so_far(history),
            wait_limit_s=configuration.capacity_wait_minutes * 60,
            retry_base_s=configuration.capacity_retry_seconds,
        )
        waited = f"{decision.waited_s / 60:.1f} of {configuration.capacity_wait_minutes:g} min"
        if decision.retry_at is None:
            logger.error(
                "Gave up waiting for RunPod capacity after %s (capacity_wait_minutes): %s", waited, why
            )
            return False
        message = f"Waiting for RunPod capacity ({waited} so far): {why} Next check at {decision.retry_at:%H:%M:%S} UTC."
        try:
            await propose_state(
                self.client,
                Scheduled(scheduled_time=decision.retry_at, name=AWAITING_CAPACITY, message=message),
                flow_run_id=flow_run.id,
            )
        except (Abort, ObjectNotFound):
            return True  # cancelled or deleted meanwhile: nothing left to launch
        logger.warning(message)
        self._emit_flow_run_event(flow_run, "capacity.waiting", message)
        return True

    def _emit_pool_event(self, what: str, reason: str) -> None:
        emit_event(
            event=f"{EVENT_PREFIX}.{what}",
            resource={
                "prefect.resource.id": f"prefect.work-pool.{self._work_pool_name}",
                "prefect.resource.name": self._work_pool_name,
            },
            payload={"reason": reason},
        )

    def _emit_flow_run_event(self, flow_run: FlowRun, what: str, message: str) -> None:
        emit_event(
            event=f"{EVENT_PREFIX}.{what}",
            resource={
                "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                "prefect.resource.name": flow_run.name,
            },
            related=[
                {
                    "prefect.resource.id": f"prefect.work-pool.{self._work_pool_name}",
                    "prefect.resource.role": "work-pool",
                }
            ],
            payload={"message": message},
        )

    # -- watching ------------------------------------------------------------------------------------

    async def _watch_pod(
        self,
        flow_run: FlowRun,
        configuration: RunPodJobConfiguration,
        client: RunPodClient,
        launched: LaunchedPod,
        created_at: float,
        logger: PrefectLogAdapter,
    ) -> RunPodWorkerResult:
        """Watch pod and run until a verdict; ``created_at`` (Unix time) starts the pod's charge."""
        watch = PodWatch(pod_id=launched.pod_id, placement=launched.candidate.describe())
        launched_at = time.monotonic()
        max_run_seconds = configuration.max_run_hours * 3600 if configuration.max_run_hours else None
        while True:
            await anyio.sleep(configuration.poll_interval_seconds)
            # Pod first, flow run second: a pod gone because its run just finished is then always seen
            # together with the run's final state (see pod_outcome.decide).
            seen_pod_at = await self._observe_pod(client, watch, logger, configuration.poll_interval_seconds)
            run = await self._observe_flow_run(flow_run.id, seen_pod_at=seen_pod_at)
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
                final_state = run.flow_run.state if run.flow_run is not None else None
                return await self._conclude(
                    verdict,
                    flow_run,
                    configuration,
                    client,
                    watch,
                    time.monotonic() - launched_at,
                    logger,
                    final_state,
                    launched=launched,
                    created_at=created_at,
                )

    async def _observe_pod(
        self, client: RunPodClient, watch: PodWatch, logger: PrefectLogAdapter, poll_interval: float
    ) -> float:
        """Look at the pod; when RunPod's answer came back (``time.monotonic()``)."""
        # One list of the account's pods serves every run polling within the same interval: RunPod's
        # rate limit is per account and per minute, not per pod.
        pod_list = self._pod_lists[client]
        try:
            pod, seen_at = await anyio.to_thread.run_sync(
                pod_list.get_pod_seen, watch.pod_id, poll_interval * 0.9
            )
        except Exception as exc:  # noqa: BLE001 - an API error or a malformed answer: look again next poll
            logger.warning("Cannot read pod %s from RunPod (%s); will look again", watch.pod_id, exc)
            watch.observe(None, PodPhase.UNKNOWN)
            return time.monotonic()
        was_up = watch.last_seen is not None and watch.last_seen.runtime_up
        watch.observe(pod, pod_phase(pod))
        if pod is not None and pod.runtime_up and not was_up:
            logger.info("Pod %s is up; the flow run starts inside it", watch.pod_id)
        return seen_at

    async def _observe_flow_run(
        self, flow_run_id: UUID, *, seen_pod_at: float | None = None
    ) -> _FlowRunObservation:
        """The run as Prefect has it now; with ``seen_pod_at``, from the read every watch shares
        (:class:`FlowRunReads`) once it started after that moment."""
        try:
            if seen_pod_at is None:
                current = await self.client.read_flow_run(flow_run_id)
            else:
                current = await self._shared_flow_run_reads().read(flow_run_id, seen_pod_at)
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
        """Mark a Cancelling run Cancelled, or a cancelled run its dying engine marked Crashed. Never
        raises: the pod must be terminated whatever Prefect answers."""
        current = await self._observe_flow_run(flow_run_id)
        if current.flow_run is not None and current.state_type in (StateType.CANCELLING, StateType.CRASHED):
            try:
                await self._mark_flow_run_as_cancelled(current.flow_run, state_updates={"message": message})
            except Exception as exc:  # noqa: BLE001 - retried at the next settle check
                self._logger.warning("Could not mark flow run %s Cancelled (%s)", flow_run_id, exc)

    async def _was_cancelling(self, flow_run_id: UUID) -> bool:
        """Whether the run was ever Cancelling (False when Prefect cannot say)."""
        try:
            states = await self.client.read_flow_run_states(flow_run_id)
        except Exception as exc:  # noqa: BLE001 - the crash stands as the engine reported it
            self._logger.warning("Cannot read the states of flow run %s (%s)", flow_run_id, exc)
            return False
        return any(state.type is StateType.CANCELLING for state in states)

    async def _set_crashed(self, flow_run_id: UUID, message: str) -> None:
        try:
            await self.client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
        except Exception as exc:  # noqa: BLE001 - _insist_on_crash tries again
            self._logger.warning("Could not mark flow run %s Crashed (%s)", flow_run_id, exc)

    async def _insist_on_crash(self, flow_run_id: UUID, message: str) -> None:
        """Keep the worker's Crashed message (why the run ended: max_run_hours, the TTL, a lost pod)
        over the one an engine killed by SIGTERM forces ("aborted by a termination signal"): the
        control tier decides from it whether to recover the job. A real outcome (Completed, Failed,
        Cancelled) is left alone."""
        with anyio.move_on_after(FINAL_STATE_SETTLE_SECONDS):
            while True:
                current = await self._observe_flow_run(flow_run_id)
                state = current.flow_run.state if current.flow_run is not None else None
                if state is not None and state.is_final() and state.type is not StateType.CRASHED:
                    return
                if state is None or state.type is not StateType.CRASHED or state.message != message:
                    await self._set_crashed(flow_run_id, message)
                await anyio.sleep(INSIST_POLL_SECONDS)

    async def _await_pod_end(
        self, client: RunPodClient, watch: PodWatch, seconds: float, poll: float
    ) -> bool:
        """Whether the pod ended itself within ``seconds`` (its entrypoint does once the engine exits)."""
        with anyio.move_on_after(seconds):
            while True:
                try:
                    pod = await anyio.to_thread.run_sync(client.get_pod, watch.pod_id)
                except Exception:  # noqa: BLE001 - unreadable now: not gone, as far as we know
                    pod = watch.last_seen
                if pod_phase(pod) is PodPhase.GONE:
                    return True
                await anyio.sleep(min(poll, 1.0))
        return False

    async def _keep_final_state(
        self, flow_run_id: UUID, final_state: State, logger: PrefectLogAdapter
    ) -> None:
        """Put back a final state that a crash reported after it replaced (an engine that got SIGTERM
        while shutting down forces Crashed over Completed). A final state is the run's outcome."""
        with anyio.move_on_after(FINAL_STATE_SETTLE_SECONDS):
            while True:
                current = await self._observe_flow_run(flow_run_id)
                state = current.flow_run.state if current.flow_run is not None else None
                if (
                    state is not None
                    and state.type is StateType.CRASHED
                    and final_state.type is not StateType.CRASHED
                    and state.timestamp > final_state.timestamp
                ):
                    logger.warning(
                        "A crash was reported after the run had ended %s (%s); keeping %s",
                        final_state.name,
                        state.message,
                        final_state.name,
                    )
                    await self.client.set_flow_run_state(flow_run_id, final_state.fresh_copy(), force=True)
                    return
                await anyio.sleep(1.0)

    async def _conclude(
        self,
        verdict: Verdict,
        flow_run: FlowRun,
        configuration: RunPodJobConfiguration,
        client: RunPodClient,
        watch: PodWatch,
        seconds_since_launch: float,
        logger: PrefectLogAdapter,
        final_state: State | None = None,
        *,
        launched: LaunchedPod,
        created_at: float,
    ) -> RunPodWorkerResult:
        """Act on a verdict: make sure the pod goes in every case (billing stops), record what it cost
        (from its ``launched`` placement and ``created_at``, Unix time) and settle the run's state.

        A finished run's pod gets ``final_state_grace_seconds`` to end itself first: terminating it
        at once kills an engine still sending its last logs, which then reports Crashed. A cancelled
        run is marked Cancelled before its pod is terminated, and kept Cancelled while the pod goes
        down: an engine started without Prefect's runner (which handles cancellation itself) sees only
        SIGTERM and forces Crashed, though what ended it was the user's cancellation. A run the worker
        crashes (``max_run_hours``, the start timeout, a lost pod) likewise gets the worker's account
        before its pod is terminated, and keeps it over the engine's bare crash report.
        """
        pod_id = watch.pod_id
        # A pod already seen gone (lost, or ended with its run) stopped billing at that observation.
        gone_at = time.time() if watch.pod is PodPhase.GONE else None
        cancelled_message = f"Cancelled; the worker is terminating RunPod pod {pod_id}."
        engine_crashed = (
            verdict is Verdict.FLOW_RUN_FINISHED and final_state is not None and final_state.is_crashed()
        )
        if engine_crashed and await self._was_cancelling(flow_run.id):
            # Cancelled between two polls: its engine, stopped for the cancellation, forced Crashed.
            # A cancellation is the user's decision, never a lost pod to recover.
            verdict, engine_crashed = Verdict.CANCEL, False
        crash_account = None
        if engine_crashed:
            crash_account = engine_crash_message(
                watch,
                final_state.message,
                ttl_hours=configuration.ttl_hours,
                pod_env=configuration.env,
                seconds_since_launch=seconds_since_launch,
            )
        if crash_account is not None:
            # Said before the charge is recorded: the control tier reads the run's state once the
            # charge is there, to decide on recovery and to list the attempt.
            await self._set_crashed(flow_run.id, crash_account)
        if verdict is Verdict.CANCEL:
            await self._keep_cancelled(flow_run.id, cancelled_message)
        verdict_account = None
        if verdict.crashes_run:
            # Said before the pod is terminated: the SIGTERM makes the engine inside force its own bare
            # Crashed, and whoever looks first (the control tier deciding on recovery, a user's --watch)
            # must find why the worker ended the run.
            verdict_account = crash_message(
                verdict,
                watch,
                seconds_since_launch=seconds_since_launch,
                ttl_hours=configuration.ttl_hours,
                max_run_hours=configuration.max_run_hours,
                start_timeout_seconds=configuration.pod_start_timeout_seconds,
            )
            await self._propose_crashed_state(flow_run, verdict_account)
        ended_itself = False
        if verdict is Verdict.FLOW_RUN_FINISHED and watch.pod is not PodPhase.GONE:
            ended_itself = await self._await_pod_end(
                client, watch, configuration.final_state_grace_seconds, configuration.poll_interval_seconds
            )
            if ended_itself:
                logger.info("RunPod pod %s ended itself after the flow run finished", pod_id)
        if not ended_itself and watch.pod is not PodPhase.GONE:
            try:
                if await anyio.to_thread.run_sync(client.terminate_pod, pod_id):
                    logger.info("Terminated RunPod pod %s (%s)", pod_id, verdict.value.replace("_", " "))
            except RunPodApiError as exc:
                logger.error(
                    "Could not terminate pod %s (%s); the worker's orphan sweep will retry", pod_id, exc
                )
        # Before the state settles (seconds more): the control tier waits for this to close the job's cost.
        await self._record_charge(
            flow_run,
            configuration,
            client,
            launched,
            created_at=created_at,
            ended_at=gone_at or time.time(),
            logger=logger,
        )
        if crash_account is not None:
            await self._insist_on_crash(flow_run.id, crash_account)
        elif verdict is Verdict.FLOW_RUN_FINISHED and final_state is not None and final_state.is_final():
            await self._keep_final_state(flow_run.id, final_state, logger)
        if verdict is Verdict.CANCEL:
            logger.info("Flow run cancelled; RunPod pod %s terminated", pod_id)
            with anyio.move_on_after(CANCEL_SETTLE_SECONDS):
                while True:
                    await anyio.sleep(min(configuration.poll_interval_seconds, 1.0))
                    await self._keep_cancelled(flow_run.id, cancelled_message)
        if verdict_account is None:
            return RunPodWorkerResult(identifier=pod_id, status_code=0)
        await self._insist_on_crash(flow_run.id, verdict_account)
        return RunPodWorkerResult(identifier=pod_id, status_code=1)

    async def _record_charge(
        self,
        flow_run: FlowRun,
        configuration: RunPodJobConfiguration,
        client: RunPodClient,
        launched: LaunchedPod,
        *,
        created_at: float,
        ended_at: float,
        logger: PrefectLogAdapter,
    ) -> None:
        """Write the gone pod's closed charge to the cost ledger (an artifact on its flow run), with
        RunPod's billed figure where its billing endpoint answers. Best effort: never fails the run."""
        billed = await read_pod_bill(client, launched.pod_id, logger)
        charge = self._charge_of(
            flow_run, configuration, launched, created_at=created_at, ended_at=ended_at, billed_usd=billed
        )
        logger.info("%s", describe_charge(charge))
        await self._write_charge(charge, logger)

    def _charge_of(
        self,
        flow_run: FlowRun,
        configuration: RunPodJobConfiguration,
        launched: LaunchedPod,
        *,
        created_at: float,
        ended_at: float | None,
        billed_usd: float | None = None,
    ) -> PodCharge:
        """The charge of the pod launched for ``flow_run``: open while ``ended_at`` is None."""
        return pod_charge(
            pod_id=launched.pod_id,
            flow_run_id=str(flow_run.id),
            tags=flow_run.tags or [],
            parameters=flow_run.parameters,
            work_pool=self._work_pool_name,
            candidate=launched.candidate,
            created_at=created_at,
            ended_at=ended_at,
            billed_usd=billed_usd,
            bound_at=pod_bound(
                created_at, max_run_hours=configuration.max_run_hours, ttl_hours=configuration.ttl_hours
            ),
        )

    async def _write_charge(self, charge: PodCharge, logger: PrefectLogAdapter) -> None:
        """Put ``charge`` in the cost ledger; a failure is logged, never raised."""
        try:
            await self.client.create_artifact(charge_artifact(charge))
        except Exception as exc:  # noqa: BLE001 - the run's outcome matters more than its bill
            logger.warning("Could not record the cost of pod %s in Prefect (%s)", charge.pod_id, exc)

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

    async def _accounts_of_pool(self) -> None:
        """Register every RunPod account the pool uses: its default credentials and each of its
        deployments' ``runpod_credentials`` override, so a restarted worker sweeps them all; and note
        the longest a pod of the pool may run, which bounds the search for open charges."""
        value_sets: list[dict[str, Any]] = [{}]
        try:
            deployments = await self.client.read_deployments(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name]))
            )
            value_sets += [
                dict(d.job_variables or {})
                for d in deployments
                if (d.job_variables or {}).get("runpod_credentials")
            ]
            self._longest_pod_hours = longest_pod_hours(
                self.work_pool.base_job_template, [d.job_variables or {} for d in deployments]
            )
        except Exception as exc:  # noqa: BLE001 - still sweep the accounts already known
            self._logger.warning("Cannot read the work pool's deployments: %s", exc)
        for values in value_sets:
            try:
                configuration = await RunPodJobConfiguration.from_template_and_values(
                    base_job_template=self.work_pool.base_job_template, values=values, client=self.client
                )
            except Exception as exc:  # noqa: BLE001
                self._logger.warning("Cannot resolve RunPod credentials of the pool or a deployment: %s", exc)
                continue
            if configuration.runpod_credentials is not None:
                self._client_for(configuration.runpod_credentials)

    async def _sweep_orphaned_pods(self) -> None:
        """Sweep every RunPod account this worker's pool uses, then close the open charges of the pods
        it terminated or found gone with nobody watching them."""
        await self._accounts_of_pool()
        terminated: dict[str, tuple[RunPodClient, float]] = {}
        for client in list(self._clients.values()):

            def note_terminated(pod: Pod, at: float, client: RunPodClient = client) -> None:
                terminated[pod.id] = (client, at)

            try:
                await sweep_orphaned_pods(
                    runpod_client=client,
                    prefect_client=self.client,
                    work_pool_name=self._work_pool_name,
                    watched_pod_ids=set(self._watched_pod_ids),
                    logger=self._logger,
                    on_terminated=note_terminated,
                )
            except Exception as exc:  # noqa: BLE001 - a failed sweep must not stop the worker
                self._logger.warning("Orphaned-pod sweep failed (%s); it runs again later", exc)
        try:
            await close_open_charges(
                prefect_client=self.client,
                pod_lists=dict(self._pod_lists),
                work_pool_name=self._work_pool_name,
                watched_pod_ids=set(self._watched_pod_ids),
                terminated=terminated,
                since=window_start(self._longest_pod_hours),
                logger=self._logger,
            )
        except Exception as exc:  # noqa: BLE001 - the charges stay open until a later sweep
            self._logger.warning(
                "Closing the open charges of unwatched pods failed (%s); tried again later", exc
            )


def _sweep_interval_seconds() -> float:
    """``OW_RUNPOD_SWEEP_INTERVAL_SECONDS`` (default 60, at most an hour); a bad value raises ValueError
    naming the variable, so the worker stops at setup instead of never sweeping."""
    return parse_bounded_positive(
        os.environ.get(SWEEP_INTERVAL_ENV),
        name=SWEEP_INTERVAL_ENV,
        default=60.0,
        maximum=SWEEP_INTERVAL_SECONDS_MAX,
    )
