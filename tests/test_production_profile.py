"""The production profile end to end: the project on a Prefect server backed by PostgreSQL and Redis.

The server is what ``make production`` starts (``infra/production/server.py``): two API processes
behind one URL, the background services in a third process, a database and a Redis database of its
own (``tests/fixtures/production.py``). Through it, the paths that matter at scale: a fine-tuning job
from submission to result, its cache hit, identical submissions at once training once, a
cancellation reaching the GPU stage, events crossing from one API process to another through Redis,
the ``runpod`` worker launching into the emulator, and a hundred jobs waiting on the control worker
(a thread each, not a process) and cancelled while they wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling, Running
from pydantic import BaseModel

from infra.local import stack as local_stack
from tests import runpod_flows
from tests.fixtures.jobs import FAST_SFT, assert_trained_once, register_script_job, submit_at_once
from tests.fixtures.production import ProductionStack
from tests.fixtures.runpod import (
    create_runpod_pool,
    delete_runpod_pool,
    deploy_to_pool,
    make_emulator,
    pods_of,
    start_worker_process,
    submit,
    wait_for_flow_run,
)


@pytest.fixture(scope="module")
def sft_params(production_stack: ProductionStack, tiny_model_dir: Path, conversations_path: Path):
    training_file = production_stack.upload(conversations_path, "conversations")

    def build(**overrides) -> dict:
        # One epoch (6 steps): these tests are about the orchestration, test_finetune_flow about the loss.
        return {"model": str(tiny_model_dir), "training_file": training_file, **FAST_SFT, "epochs": 1, **overrides}

    return build


@pytest.fixture(scope="module")
def submitted_twice(production_stack: ProductionStack, sft_params):
    """One fine-tuning job submitted twice at once, both waited for: the two control runs."""
    return submit_at_once(production_stack, sft_params(), timeout=600)


def test_the_server_runs_on_postgresql_and_redis_with_two_api_processes(production_stack: ProductionStack):
    env = _environment(production_stack.api_pid)
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert env["PREFECT_MESSAGING_BROKER"] == "prefect_redis.messaging"
    assert env["PREFECT_SERVER_DOCKET_URL"] == production_stack.redis_url
    api_processes = [child for child in _children(production_stack.api_pid) if "spawn_main" in child]
    assert len(api_processes) == 2, api_processes


def test_identical_submissions_at_once_train_once_and_store_the_result(production_stack, submitted_twice):
    stack = production_stack

    job_id = assert_trained_once(stack, submitted_twice)  # as on the embedded default (test_finetune_flow)
    record = stack.store.read_json(f"jobs/{job_id}/result.json")
    assert record["metrics"]["final_loss"] is not None
    assert stack.store.exists(f"jobs/{job_id}/adapter/adapter_config.json")


def test_an_identical_resubmission_is_a_cache_hit_that_starts_no_gpu_stage(production_stack, submitted_twice, sft_params):
    stack = production_stack
    job_id = stack.job_id_of(submitted_twice[0])

    again = stack.run("finetune/sft", sft_params(), timeout=300)

    assert again.state.type == StateType.COMPLETED, again.state.message
    assert stack.job_id_of(again) == job_id
    states = {task.name.rsplit("-", 1)[0]: task.state.name for task in stack.task_runs(again.id, expect=("launch-gpu-stage",))}
    assert states["launch-gpu-stage"] == "Cached"
    assert len(stack.gpu_stage_runs(job_id)) == 1


def test_cancelling_a_job_cancels_its_running_gpu_stage(production_stack, sft_params):
    stack = production_stack
    params = sft_params(seed=23, epochs=40)  # 240 steps: still training when the cancellation lands
    control = stack.submit("finetune/sft", params)
    stage = _wait_for_running_gpu_stage(stack, control.id)

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(control.id, Cancelling(message="cancelled by the test"), force=True)

    assert stack.wait(control.id, timeout=120).state.type == StateType.CANCELLED
    assert stack.wait(stage.id, timeout=120).state.type == StateType.CANCELLED
    assert not stack.store.exists(f"jobs/{stack.job_id_of(stage)}/result.json")


@pytest.fixture(scope="module")
def second_api(production_stack: ProductionStack, tmp_path_factory) -> Iterator[str]:
    """One more API process of the same server on a port of its own (as on another host); its URL."""
    from infra.production.server import start_api

    port = local_stack.free_port()
    log = tmp_path_factory.mktemp("second-api") / "prefect-api.log"
    process = start_api(production_stack.server_env, port, log, workers=1, ui=False)
    try:
        local_stack.wait_healthy(local_stack.api_url(port), timeout=120, process=process)
        yield local_stack.api_url(port)
    finally:
        local_stack.stop_process(process.pid)


def test_a_state_change_through_one_api_process_reaches_a_subscriber_of_another(production_stack, second_api):
    """The event stream crosses API processes through Redis: what the control tier's wait relies on."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(_not_deployed)  # no deployment: no worker picks it up

    with temporary_settings(updates={PREFECT_API_URL: second_api}):
        received = asyncio.run(_first_running_event(flow_run.id, lambda: _set_running(production_stack.api_url, flow_run.id)))

    assert received.resource.id == f"prefect.flow-run.{flow_run.id}"


def test_a_runpod_worker_on_another_api_process_runs_a_flow_in_an_emulated_pod(production_stack, second_api, tmp_path):
    """Submitted through the server's URL, launched and run through the other API process."""
    with make_emulator(tmp_path) as emulator:
        pool = create_runpod_pool(emulator)
        worker = start_worker_process(pool.name, tmp_path / "workers", PREFECT_API_URL=second_api)
        try:
            deployment = deploy_to_pool(runpod_flows.say_hello, pool.name)
            flow_run_id = submit(deployment, {"name": "production"})

            flow_run = wait_for_flow_run(flow_run_id, timeout=180)

            assert flow_run.state.is_completed(), flow_run.state
            [pod] = pods_of(emulator, flow_run_id)
            assert flow_run.infrastructure_pid == pod.id
            assert pod.env["PREFECT_API_URL"] == second_api
            emulator.wait_until(lambda: pod.status == "TERMINATED", 30, "the pod to be terminated")
        finally:
            worker.stop()
            delete_runpod_pool(pool)


@flow
def _not_deployed() -> None:
    """A flow run only created, so that setting its state through the API emits an event."""


def _children(pid: int) -> list[str]:
    """Command lines of the direct children of ``pid``."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode() for child in children]


def _environment(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


def _wait_for_running_gpu_stage(stack, control_run_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            control = client.read_flow_run(control_run_id)
        job_tags = [tag for tag in control.tags if tag.startswith("ow-job:")]
        if job_tags:
            for stage in stack.gpu_stage_runs(job_tags[0].split(":", 1)[1]):
                if stage.state.type == StateType.RUNNING:
                    return stage
        time.sleep(0.5)
    raise TimeoutError("the GPU stage never started running")


def _set_running(api_url: str, flow_run_id) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Running(), force=True)


async def _first_running_event(flow_run_id, trigger, timeout: float = 60):
    """Subscribe to the flow run's ``Running`` state events, call ``trigger``, return the first one."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    event_filter = EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.Running"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    async with get_events_subscriber(filter=event_filter) as subscriber:
        await asyncio.to_thread(trigger)
        async with asyncio.timeout(timeout):
            async for event in subscriber:
                return event
    raise AssertionError("the subscription ended without an event")


# -- the control tier at scale: jobs waiting cost a thread each, not a process ---------------------

WAITING_FIRST, WAITING_MORE = 10, 90  # jobs waiting at the first and at the second measurement
MB_PER_WAITING_JOB_TARGET = 5.0


class _WaitParams(BaseModel):
    word: str


@pytest.fixture
def paused_gpu_pool(production_stack):
    """The GPU pool paused: every job's GPU stage stays Scheduled and its control flow waits for it, as
    a fine-tune's does for hours. Resumed afterwards."""
    with get_client(sync_client=True) as client:
        client.update_work_pool(local_stack.GPU_POOL, WorkPoolUpdate(is_paused=True))
    try:
        yield
    finally:
        with get_client(sync_client=True) as client:
            client.update_work_pool(local_stack.GPU_POOL, WorkPoolUpdate(is_paused=False))


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def _submit_custom(job_class, words: list[str]) -> list:
    from client import OpenWeights

    ow = OpenWeights()
    definitions = [job_class(ow).definition(word=word) for word in words]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("custom/run")
        return [
            client.create_flow_run_from_deployment(deployment.id, parameters=definition, name=f"wait-{word}")
            for word, definition in zip(words, definitions, strict=True)
        ]


def _runs(ids) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(ids))), limit=200)


def _stage_runs_of(control_runs) -> list:
    job_tags = sorted({tag for run in control_runs for tag in run.tags if tag.startswith("ow-job:")})
    if not job_tags:
        return []
    with get_client(sync_client=True) as client:
        stage = client.read_deployment_by_name("gpu-stage/custom")
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[stage.id])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(any_=job_tags)),
            limit=200,
        )


def _until_all_wait(control_runs, timeout: float = 300) -> None:
    """Until every control run is Running and its GPU stage exists (Scheduled: the pool is paused)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = _runs(run.id for run in control_runs)
        ended = [(run.name, run.state_name, run.state.message) for run in runs if run.state.is_final()]
        assert not ended, ended
        running = [run for run in runs if run.state_type == StateType.RUNNING]
        if len(running) == len(control_runs) and len(_stage_runs_of(running)) == len(control_runs):
            return
        assert time.monotonic() < deadline, f"{len(running)} of {len(control_runs)} control runs waiting"
        time.sleep(1)


def test_jobs_waiting_for_their_gpu_stage_cost_the_control_worker_a_thread_each_and_still_cancel(
    production_stack, paused_gpu_pool, tmp_path
):
    script = tmp_path / "wait.py"
    script.write_text("print('not reached: the GPU pool is paused')\n")
    job_class = register_script_job("wait_test", script, _WaitParams)
    worker = int((production_stack.home / "run" / "worker-control.pid").read_text())

    first = _submit_custom(job_class, [f"a{i}" for i in range(WAITING_FIRST)])
    _until_all_wait(first)
    time.sleep(2)
    rss_first = _rss_mb(worker)
    more = _submit_custom(job_class, [f"b{i}" for i in range(WAITING_MORE)])
    _until_all_wait(first + more)
    time.sleep(2)
    rss_all = _rss_mb(worker)
    per_job = (rss_all - rss_first) / WAITING_MORE
    print(
        f"control worker: {rss_first:.1f} MB with {WAITING_FIRST} jobs waiting, {rss_all:.1f} MB with "
        f"{WAITING_FIRST + WAITING_MORE}: {per_job:.2f} MB per job"
    )
    assert per_job < MB_PER_WAITING_JOB_TARGET
    assert _children(worker) == []  # no process per flow run

    # Cancelled while waiting: each control run ends Cancelled, and so does the GPU stage it started.
    with get_client(sync_client=True) as client:
        for run in first + more:
            client.set_flow_run_state(run.id, Cancelling(message="cancelled by the test"))
    deadline = time.monotonic() + 180
    while True:
        runs = _runs(run.id for run in first + more)
        if all(run.state_type == StateType.CANCELLED for run in runs):
            break
        assert time.monotonic() < deadline, sorted({run.state_name for run in runs})
        time.sleep(1)
    stages = _stage_runs_of(runs)
    assert len(stages) == WAITING_FIRST + WAITING_MORE
    assert {stage.state_type for stage in stages} == {StateType.CANCELLED}  # none left Cancelling
