"""The ``runpod`` worker records what each pod cost, however its run ends: GPU type and count, cloud,
hourly price at launch, seconds from create to gone and RunPod's bill, as an artifact on the flow
run (the cost ledger). A real Prefect server and worker process, emulated pods that bill by the second.
The job-level sum (recoveries included) is checked in ``test_runpod_finetune.py``."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests import runpod_flows
from tests.fixtures.runpod import deploy_to_pool, pods_of, submit, wait_for_flow_run, wait_for_log


def charge_of(flow_run_id, timeout: float = 30, *, closed: bool = True):
    """The one charge recorded for the flow run, once the worker has written it (closed, by default:
    the charge is written open at launch and closed once the pod is gone)."""
    from prefect.client.orchestration import get_client

    from tasks.cost_ledger import read_charges

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            charges = read_charges(client, flow_run_ids=[flow_run_id])
            if (charges and not (closed and charges[0].is_open)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert len(charges) == 1, charges
    assert not (closed and charges[0].is_open), charges
    return charges[0]


def assert_charged_as_emulated(charge, pod, *, seen_gone_within: float):
    """The charge is the emulated pod's: its hardware, its price, its lifetime, its bill."""
    assert (charge.pod_id, charge.gpu_type_id, charge.gpu_count, charge.cloud) == (
        pod.id,
        pod.gpu.id,
        pod.gpu_count,
        pod.cloud,
    )
    assert charge.price_per_hour == pytest.approx(pod.price_per_hour)
    assert charge.created_at == pytest.approx(pod.created_at, abs=0.01)  # RunPod's createdAt, in ms
    assert pod.terminated_at - 0.5 <= charge.ended_at <= pod.terminated_at + seen_gone_within
    assert charge.billed_usd == pytest.approx(
        pod.price_per_hour * (pod.terminated_at - pod.created_at) / 3600, abs=1e-7
    )  # RunPod's amounts come rounded
    assert charge.usd == charge.billed_usd > 0
    assert charge.ended_by == "worker"


def test_a_completed_runs_pod_is_charged_price_times_its_lifetime(reset_runpod_stack):
    stack = reset_runpod_stack
    deployment = deploy_to_pool(runpod_flows.say_hello, stack.pool.name)
    flow_run_id = submit(deployment, {"name": "world"})

    assert wait_for_flow_run(flow_run_id).state.is_completed()
    charge = charge_of(flow_run_id)

    (pod,) = pods_of(stack.emulator, flow_run_id)
    assert_charged_as_emulated(charge, pod, seen_gone_within=3)
    assert charge.flow_run_id == str(flow_run_id) and charge.work_pool == stack.pool.name
    assert charge.job_id is None  # not a job's GPU stage: no ow-job tag
    line = f"Pod {pod.id} cost ${charge.usd:.4f} ({charge.seconds:.0f} s at ${charge.price_per_hour:.4g}/h, as RunPod billed)"
    assert line in wait_for_log(flow_run_id, line)


def test_a_pod_that_vanished_is_charged_up_to_when_it_was_seen_gone(reset_runpod_stack):
    stack = reset_runpod_stack
    deployment = deploy_to_pool(runpod_flows.sleep_for, stack.pool.name)
    flow_run_id = submit(deployment, {"seconds": 300})
    wait_for_flow_run(flow_run_id, until=lambda run: run.state.is_running(), timeout=90)
    (pod,) = pods_of(stack.emulator, flow_run_id)
    # Written open at launch: a worker killed now would still leave the pod in the ledger.
    so_far = charge_of(flow_run_id, closed=False)
    assert so_far.is_open and so_far.pod_id == pod.id and so_far.ended_by is None
    assert so_far.bound_at == pytest.approx(so_far.created_at + 24 * 3600)  # the default TTL
    assert 0 < so_far.seconds <= time.time() - pod.created_at + 1 and so_far.usd > 0

    stack.emulator.vanish(pod.id)

    assert wait_for_flow_run(flow_run_id, timeout=30).state.is_crashed()
    assert_charged_as_emulated(charge_of(flow_run_id), pod, seen_gone_within=3)  # one 1 s poll, and slack


def test_a_cancelled_runs_pod_is_charged_until_its_termination(reset_runpod_stack):
    stack = reset_runpod_stack
    deployment = deploy_to_pool(runpod_flows.sleep_for, stack.pool.name)
    flow_run_id = submit(deployment, {"seconds": 300})
    wait_for_flow_run(flow_run_id, until=lambda run: run.state.is_running(), timeout=90)
    (pod,) = pods_of(stack.emulator, flow_run_id)

    subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "cancel", str(flow_run_id)],
        check=True,
        capture_output=True,
        timeout=60,
    )

    charge = charge_of(flow_run_id)
    assert pod.terminated_by == "account"
    assert_charged_as_emulated(charge, pod, seen_gone_within=3)
