"""A worker killed mid-run (SIGKILL) still leaves its pod in the cost ledger: the charge is written open
at launch, and the next worker of the pool closes it once it finds the pod gone — ended with its run,
or terminated by that worker's own sweep. A real Prefect server, real worker processes (sweeping every
2 s), emulated pods that bill by the second; and ``ow costs`` counting an open charge. The arithmetic is
in ``test_open_charge_rules.py``."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
from prefect import flow

from infra.worker.pod_charge import close_charge
from jobs.costs import PodCharge
from tests import runpod_flows
from tests.fixtures.runpod import deploy_to_pool, pods_of, submit, wait_for_flow_run
from tests.test_runpod_pod_charges import charge_of

# The worker's time of a pod's end is its own clock after RunPod's answer; the emulator's is RunPod's.
END_TOLERANCE_S = 3.0


def is_running(flow_run) -> bool:
    return flow_run.state is not None and flow_run.state.is_running()


def start_a_run_and_kill_its_worker(pool, start_worker, flow, parameters, **job_variables):
    """A run of ``flow`` in its pod, whose worker is then SIGKILLed: (flow run id, pod, open charge)."""
    first = start_worker()
    flow_run_id = submit(deploy_to_pool(flow, pool.name, **job_variables), parameters)
    wait_for_flow_run(flow_run_id, until=is_running, timeout=90)
    (pod,) = pods_of(pool.emulator, flow_run_id)
    opened = charge_of(flow_run_id, closed=False)
    first.kill_hard()
    return flow_run_id, pod, opened


def assert_closed_at_the_pods_end(charge, pod, *, ended_by: str) -> None:
    assert not charge.is_open and charge.ended_by == ended_by
    assert (charge.pod_id, charge.gpu_type_id, charge.gpu_count) == (pod.id, pod.gpu.id, pod.gpu_count)
    assert charge.created_at == pytest.approx(pod.created_at, abs=0.01)
    assert charge.seconds == pytest.approx(pod.terminated_at - pod.created_at, abs=END_TOLERANCE_S)
    assert charge.billed_usd == pytest.approx(
        pod.price_per_hour * (pod.terminated_at - pod.created_at) / 3600, abs=1e-7
    )
    assert charge.usd == charge.billed_usd > 0


def test_a_pod_that_ended_with_its_run_after_its_worker_was_killed_is_charged_by_the_next_worker(
    runpod_pool, start_runpod_worker
):
    emulator = runpod_pool.emulator
    flow_run_id, pod, opened = start_a_run_and_kill_its_worker(
        runpod_pool, start_runpod_worker, runpod_flows.sleep_for, {"seconds": 4}
    )
    assert opened.is_open and opened.pod_id == pod.id

    assert wait_for_flow_run(flow_run_id, timeout=60).state.is_completed()  # the pod finishes the run alone
    emulator.wait_until(lambda: pod.status == "TERMINATED", 30, "the pod to end itself with its run")
    assert pod.terminated_by == "pod"
    time.sleep(2)
    assert charge_of(flow_run_id, closed=False).is_open  # nobody watched it end

    start_runpod_worker()

    charge = charge_of(flow_run_id, timeout=60)
    assert_closed_at_the_pods_end(charge, pod, ended_by="billing")  # RunPod's bill says when it stopped


def test_a_pod_left_hanging_by_a_killed_worker_is_terminated_by_the_next_workers_sweep_and_charged(
    runpod_pool, start_runpod_worker
):
    emulator = runpod_pool.emulator
    # The run would sleep ten minutes; the pod may run 0.02 h (72 s), a bound written on it at launch.
    flow_run_id, pod, opened = start_a_run_and_kill_its_worker(
        runpod_pool, start_runpod_worker, runpod_flows.sleep_for, {"seconds": 600}, max_run_hours=0.02
    )
    assert opened.bound_at == pytest.approx(opened.created_at + 72)

    start_runpod_worker()
    # Still running under its run, within its bound: the new worker leaves pod and charge alone.
    time.sleep(4)
    assert pod.status == "RUNNING"
    so_far = charge_of(flow_run_id, closed=False)
    assert so_far.is_open and so_far.seconds == pytest.approx(time.time() - pod.created_at, abs=5)

    emulator.wait_until(
        lambda: pod.status == "TERMINATED", 90, "the sweep to terminate the pod past its bound"
    )
    assert pod.terminated_by == "account"
    charge = charge_of(flow_run_id, timeout=60)
    assert_closed_at_the_pods_end(charge, pod, ended_by="sweep")
    assert wait_for_flow_run(flow_run_id, timeout=30).state.is_crashed()


@flow
def ledger_subject() -> None:
    """Never runs: a flow whose runs the charges below are attached to."""


def test_ow_costs_counts_an_open_charge_up_to_now_and_a_closed_version_replaces_it(prefect_server):
    from prefect.client.orchestration import get_client

    from client.costs import Costs
    from tasks.cost_ledger import charge_artifact

    created = dt.datetime(2019, 3, 4, 10, tzinfo=dt.UTC).timestamp()  # a day no other test charges
    with get_client(sync_client=True) as client:
        runs = [str(client.create_flow_run(ledger_subject).id) for _ in range(2)]
        launched = [
            PodCharge(
                pod_id=f"open-{index}-{uuid.uuid4().hex[:8]}",  # sorted by index
                flow_run_id=run,
                job_id=f"job-{index}",
                price_per_hour=0.5,
                created_at=created,
                ended_at=None,
                bound_at=created + 2 * 3600,  # long past: an open charge counts up to it, no further
            )
            for index, run in enumerate(runs)
        ]
        for charge in launched:
            client.create_artifact(charge_artifact(charge))
        client.create_artifact(
            charge_artifact(
                close_charge(launched[1], ended_at=created + 600, ended_by="sweep", billed_usd=None)
            )
        )

    first, second = Costs().charges(since="2019-03-04", until="2019-03-04")

    assert (first.is_open, first.seconds, first.usd) == (True, 7200, pytest.approx(1.0))
    assert (second.is_open, second.ended_by, second.usd) == (False, "sweep", pytest.approx(0.5 * 600 / 3600))
    (row,) = Costs().report(by="day", since="2019-03-04", until="2019-03-04")
    assert (row.usd, row.pods, row.jobs, row.gpu_hours) == (
        pytest.approx(1.0 + 0.5 / 6),
        2,
        2,
        pytest.approx(2 + 1 / 6),
    )
