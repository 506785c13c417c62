"""Two ``runpod`` workers on one pool: they share the runs, launch one pod per run, and neither one's
sweep (every 2 s here) ends a pod the other is still watching. Real worker processes, the session's
Prefect server, the RunPod emulator; twenty runs, shared by the module's tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.objects import StateType

from tests import runpod_flows
from tests.fixtures.runpod import (
    WorkerProcess,
    create_runpod_pool,
    delete_runpod_pool,
    deploy_to_pool,
    log_messages,
    make_emulator,
    pods_of,
    start_worker_process,
    submit,
    wait_for_flow_run,
)
from tests.fixtures.runpod_emulator import RunPodEmulator

RUNS = 20
# Pods are processes on this machine: one Python process per pod rather than `prefect flow-run
# execute`'s three (as in bench/worker_scale.py), at a lower priority, four at a time.
LIGHT_POD_COMMAND = "python -m prefect.engine"
POOL_LIMIT = 4


@dataclass
class SharedPool:
    pool_name: str
    emulator: RunPodEmulator
    workers: list[WorkerProcess]
    finished: list  # the flow runs, final


@pytest.fixture(scope="module")
def shared_pool(prefect_server, tmp_path_factory) -> Iterator[SharedPool]:
    """Twenty runs through two workers of one pool (limit 4), each run 2 s in its pod past Completed
    (an on-completion hook), within the 30 s its worker gives a finished run's pod to end itself."""
    root = tmp_path_factory.mktemp("shared-pool")
    with make_emulator(root, pod_niceness=10) as emulator:
        pool = create_runpod_pool(emulator)
        workers: list[WorkerProcess] = []
        try:
            with get_client(sync_client=True) as client:
                client.update_work_pool(pool.name, WorkPoolUpdate(concurrency_limit=POOL_LIMIT))
            workers += [start_worker_process(pool.name, root / "workers") for _ in range(2)]
            deployment = deploy_to_pool(
                runpod_flows.finish_slowly, pool.name, command=LIGHT_POD_COMMAND, final_state_grace_seconds=30
            )
            flow_run_ids = [submit(deployment, {"hook_seconds": 2}) for _ in range(RUNS)]
            finished = [wait_for_flow_run(flow_run_id, timeout=600) for flow_run_id in flow_run_ids]
            emulator.wait_until(lambda: emulator.pods() == [], 60, "every pod to end")
            yield SharedPool(pool_name=pool.name, emulator=emulator, workers=workers, finished=finished)
        finally:
            for worker in workers:
                worker.stop()
            delete_runpod_pool(pool)


def test_two_workers_share_the_runs_and_launch_one_pod_per_run_and_leave_none(shared_pool: SharedPool):
    finished, emulator = shared_pool.finished, shared_pool.emulator

    assert [run.state.type for run in finished] == [StateType.COMPLETED] * RUNS, [
        run.state.message for run in finished if not run.state.is_completed()
    ]
    assert [len(pods_of(emulator, run.id)) for run in finished] == [1] * RUNS
    assert all(run.infrastructure_pid == pods_of(emulator, run.id)[0].id for run in finished)
    assert emulator.pods() == []
    # The launch line names the pod `ow-<pool>-<flow run id>`: each run is in exactly one worker's log.
    launched = [
        [f"{shared_pool.pool_name}-{run.id})" in _launch_lines(worker) for run in finished]
        for worker in shared_pool.workers
    ]
    assert [first + second for first, second in zip(*launched, strict=True)] == [1] * RUNS
    assert all(any(runs) for runs in launched), "one worker launched every run"


def test_neither_workers_sweep_ends_a_pod_the_other_still_watches(shared_pool: SharedPool):
    # Both workers were up throughout: no pod was ever an orphan for a sweep to end.
    swept = [line for worker in shared_pool.workers for line in worker.log().splitlines() if "Terminating orphaned" in line]
    assert swept == []
    hooks_done = [
        any("completion hook done" in message for message in log_messages(run.id)) for run in shared_pool.finished
    ]
    assert hooks_done == [True] * RUNS


def _launch_lines(worker: WorkerProcess) -> str:
    return "\n".join(line for line in worker.log().splitlines() if "Launched RunPod pod" in line)
