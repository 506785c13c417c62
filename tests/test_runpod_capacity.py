"""The ``runpod`` worker against RunPod's stock: in-stock GPUs first, waiting instead of crashing when
nothing is in stock, pausing on billing refusals, per-job hardware, and a finished run never crashed
by its own pod's termination. A real Prefect server, real worker processes, the REST v2 emulator."""

from __future__ import annotations

import time

from prefect.client.orchestration import get_client

from infra.runpod.capacity import AWAITING_CAPACITY
from tests import runpod_flows
from tests.fixtures.runpod import deploy_to_pool, pods_of, submit, wait_for_flow_run, wait_for_log

A100_IDS = {"NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"}


def state_history(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_run_states(flow_run_id)


def creates(emulator) -> int:
    return len(emulator.requests_for("createPod"))


def awaiting_capacity(flow_run) -> bool:
    return flow_run.state is not None and flow_run.state.name == AWAITING_CAPACITY


def test_types_out_of_stock_are_not_tried_and_the_cheapest_in_stock_one_is_used(reset_runpod_stack):
    stack = reset_runpod_stack
    stack.emulator.set_capacity("NVIDIA A40", 0)  # the cheapest of the pool's types
    deployment = deploy_to_pool(runpod_flows.say_hello, stack.pool.name, cloud_type="SECURE")
    before = creates(stack.emulator)

    flow_run_id = submit(deployment)

    assert wait_for_flow_run(flow_run_id).state.is_completed()
    (pod,) = pods_of(stack.emulator, flow_run_id)
    assert pod.gpu.id == "NVIDIA RTX A6000"
    assert creates(stack.emulator) - before == 1  # no doomed create on the out-of-stock type


def test_stock_that_vanished_after_the_catalog_read_falls_back_to_the_next_type(reset_runpod_stack):
    stack = reset_runpod_stack
    stack.emulator.set_capacity("NVIDIA A40", 0)
    stack.emulator.set_catalog_availability("NVIDIA A40", "HIGH")  # the catalog still says in stock
    deployment = deploy_to_pool(runpod_flows.say_hello, stack.pool.name, cloud_type="SECURE")

    flow_run_id = submit(deployment)

    assert wait_for_flow_run(flow_run_id).state.is_completed()
    (pod,) = pods_of(stack.emulator, flow_run_id)
    assert pod.gpu.id == "NVIDIA RTX A6000"
    wait_for_log(flow_run_id, "1x NVIDIA A40 (SECURE, 48 GB, $0.40/GPU-h): no instances available")


def test_a_run_with_no_stock_anywhere_waits_visibly_and_starts_when_stock_returns(reset_runpod_stack):
    stack = reset_runpod_stack
    for gpu in ("NVIDIA A40", "NVIDIA RTX A6000"):
        stack.emulator.set_capacity(gpu, 0)
    deployment = deploy_to_pool(
        runpod_flows.say_hello, stack.pool.name, cloud_type="SECURE", capacity_retry_seconds=1
    )
    flow_run_id = submit(deployment)

    waiting = wait_for_flow_run(flow_run_id, until=awaiting_capacity, timeout=60)
    assert waiting.state.is_scheduled()
    assert "Waiting for RunPod capacity" in waiting.state.message
    assert "no stock of 1x NVIDIA A40 (SECURE), 1x NVIDIA RTX A6000 (SECURE)" in waiting.state.message
    time.sleep(3)  # it keeps waiting, with no pod and no crash
    assert pods_of(stack.emulator, flow_run_id) == []

    stack.emulator.capacity.clear()  # stock is back

    assert wait_for_flow_run(flow_run_id, timeout=120).state.is_completed()
    assert len(pods_of(stack.emulator, flow_run_id)) == 1
    assert not [state for state in state_history(flow_run_id) if state.is_crashed()]


def test_a_wait_that_runs_out_ends_the_run_listing_what_was_not_in_stock(reset_runpod_stack):
    stack = reset_runpod_stack
    for gpu in ("NVIDIA A40", "NVIDIA RTX A6000"):
        stack.emulator.set_capacity(gpu, 0)
    deployment = deploy_to_pool(
        runpod_flows.say_hello, stack.pool.name, cloud_type="SECURE", capacity_wait_minutes=0
    )

    flow_run = wait_for_flow_run(submit(deployment))

    assert flow_run.state.is_crashed(), flow_run.state
    assert "no stock of 1x NVIDIA A40 (SECURE), 1x NVIDIA RTX A6000 (SECURE)" in flow_run.state.message
    assert pods_of(stack.emulator, flow_run.id) == []


def test_a_balance_refusal_pauses_launches_until_it_clears(reset_runpod_stack):
    stack = reset_runpod_stack
    stack.emulator.set_balance_blocked(True)
    deployment = deploy_to_pool(runpod_flows.say_hello, stack.pool.name, capacity_retry_seconds=1)
    flow_run_id = submit(deployment)

    waiting = wait_for_flow_run(flow_run_id, until=awaiting_capacity, timeout=60)
    assert "launches of this pool are paused" in waiting.state.message
    assert "Insufficient balance" in waiting.state.message or "balance" in waiting.state.message.lower()
    refusals = creates(stack.emulator)
    time.sleep(2)
    assert pods_of(stack.emulator, flow_run_id) == []

    stack.emulator.set_balance_blocked(False)

    assert wait_for_flow_run(flow_run_id, timeout=120).state.is_completed()
    assert len(pods_of(stack.emulator, flow_run_id)) == 1
    assert refusals >= 1 and not [s for s in state_history(flow_run_id) if s.is_crashed()]


def test_a_job_naming_allowed_hardware_gets_exactly_that(reset_runpod_stack):
    stack = reset_runpod_stack
    deployment = deploy_to_pool(runpod_flows.say_hello, stack.pool.name)

    flow_run_id = submit(deployment, allowed_hardware=["2x A100"])  # as the control tier passes it

    assert wait_for_flow_run(flow_run_id).state.is_completed()
    (pod,) = pods_of(stack.emulator, flow_run_id)
    assert pod.gpu.id in A100_IDS and pod.gpu_count == 2


def test_a_finished_run_stays_completed_while_its_engine_is_slow_to_exit(reset_runpod_stack):
    """The pod is not terminated under an engine still shutting down: it ends itself, the run stays
    Completed, and what the engine sent last (a hook's log line) reaches the server."""
    stack = reset_runpod_stack
    deployment = deploy_to_pool(runpod_flows.finish_slowly, stack.pool.name, final_state_grace_seconds=30)
    flow_run_id = submit(deployment, {"hook_seconds": 6})

    completed = wait_for_flow_run(flow_run_id, timeout=90)
    assert completed.state.is_completed(), completed.state
    (pod,) = pods_of(stack.emulator, flow_run_id)
    stack.emulator.wait_until(lambda: pod.status == "TERMINATED", 40, "the pod to go")
    time.sleep(2)

    assert wait_for_flow_run(flow_run_id).state.is_completed()
    assert not [state for state in state_history(flow_run_id) if state.is_crashed()]
    assert pod.terminated_by == "pod"  # it ended itself once its engine exited
    wait_for_log(flow_run_id, "completion hook done")
