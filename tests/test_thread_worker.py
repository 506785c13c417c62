"""The ``threads`` worker (infra/worker/thread_worker.py): flow runs as threads of one process, a run's
``env`` for that run only, and a worker killed under its runs."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType

from infra.local import stack as local_stack
from infra.worker.thread_worker import (
    THREADS_WORKER_TYPE,
    ThreadWorker,
    held_by_dead_worker,
    infrastructure_id,
)
from jobs.environment import environ, run_environment
from tests import runpod_flows


def test_a_run_is_held_by_a_dead_worker_only_when_its_threads_worker_on_this_host_is_gone():
    alive = {100}.__contains__
    run = uuid.uuid4()
    assert infrastructure_id("host-a", 100, run) == f"threads:host-a:100:{run}"
    assert not held_by_dead_worker(infrastructure_id("host-a", 100, run), "host-a", alive)
    assert held_by_dead_worker(infrastructure_id("host-a", 200, run), "host-a", alive)
    assert not held_by_dead_worker(infrastructure_id("host-b", 200, run), "host-a", alive)  # another host's
    assert not held_by_dead_worker("4242", "host-a", alive)  # a process worker's pid
    assert not held_by_dead_worker("pod-abc123", "host-a", alive)  # a RunPod pod
    assert not held_by_dead_worker(None, "host-a", alive)


def test_a_runs_env_is_seen_by_its_own_thread_only(monkeypatch):
    monkeypatch.setenv("OW_MAX_RECOVERIES", "3")
    seen = {}

    def other_run():
        seen["other"] = environ().get("OW_MAX_RECOVERIES")

    with run_environment({"OW_MAX_RECOVERIES": "1", "OW_UNSET": None}):
        assert environ()["OW_MAX_RECOVERIES"] == "1"
        assert "OW_UNSET" not in environ()
        assert environ()["PATH"] == os.environ["PATH"]  # the process's environment underneath
        thread = threading.Thread(target=other_run)  # a thread of another run: no copy of this context
        thread.start()
        thread.join()
    assert seen["other"] == "3"
    assert environ()["OW_MAX_RECOVERIES"] == "3"
    assert os.environ["OW_MAX_RECOVERIES"] == "3"  # never written into the process's environment


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_worker_leaves_no_run_running_once_another_starts_on_the_host(prefect_server, tmp_path):
    """SIGKILL the worker while its flow run sleeps in a thread: the run cannot end itself, so the next
    ``threads`` worker of the pool on this host marks it Crashed, naming the dead worker's process."""
    pool = f"threads-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(
                name=pool, type=THREADS_WORKER_TYPE, base_job_template=ThreadWorker.get_default_base_job_template()
            )
        )
    deployment_id = runpod_flows.sleep_for.to_deployment(name=pool, work_pool_name=pool).apply()
    env = local_stack.worker_env()
    first = local_stack.start_worker(pool, THREADS_WORKER_TYPE, tmp_path / "first.log", env=env)
    second = None
    try:
        with get_client(sync_client=True) as client:
            run = client.create_flow_run_from_deployment(deployment_id, parameters={"seconds": 600})
            running = _wait_for(
                lambda: (r := client.read_flow_run(run.id)).state_type == StateType.RUNNING
                and r.infrastructure_pid
                and r,
                120,
                "the run running, its thread recorded",
            )
            assert running.infrastructure_pid.startswith(f"threads:{os.uname().nodename}:{first.pid}:")
            first.send_signal(signal.SIGKILL)
            first.wait(30)
            time.sleep(3)
            assert client.read_flow_run(run.id).state_type == StateType.RUNNING  # nobody left to end it

            second = local_stack.start_worker(pool, THREADS_WORKER_TYPE, tmp_path / "second.log", env=env)
            crashed = _wait_for(
                lambda: (r := client.read_flow_run(run.id)).state_type == StateType.CRASHED and r, 120, "run crashed"
            )
        assert f"process {first.pid}" in crashed.state.message
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                local_stack.stop_process(process.pid)
