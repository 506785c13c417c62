"""The ``runpod`` worker end to end: a real Prefect server, real worker processes, the REST v2 client,
and emulated pods that really run ``prefect flow-run execute``. Capacity and hardware choice:
``test_runpod_capacity.py``; faults that must not bill without bound: ``test_runpod_billing_bounds.py``."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time

import pytest

from infra.worker.runpod_worker import FINAL_STATE_SETTLE_SECONDS
from tests import runpod_flows
from tests.fixtures.runpod import (
    crashed_messages,
    deploy_to_pool,
    log_messages,
    pods_of,
    submit,
    wait_for_flow_run,
    wait_for_log,
)


def is_running(flow_run) -> bool:
    return flow_run.state is not None and flow_run.state.is_running()


def pod_of(emulator, flow_run_id):
    """The one pod ever made for the flow run."""
    (pod,) = pods_of(emulator, flow_run_id)
    return pod


def test_a_deployment_on_a_runpod_pool_runs_to_completed_inside_an_emulated_pod(
    reset_runpod_stack, prefect_server
):
    stack = reset_runpod_stack
    deployment = deploy_to_pool(runpod_flows.say_hello, stack.pool.name)
    flow_run_id = submit(deployment, {"name": "world"})

    flow_run = wait_for_flow_run(flow_run_id)

    assert flow_run.state.is_completed(), flow_run.state
    pod = pod_of(stack.emulator, flow_run_id)
    assert flow_run.infrastructure_pid == pod.id
    assert pod.name == f"ow-{stack.pool.name}-{flow_run_id}"
    assert shlex.split(pod.args) == [
        "python",
        "-m",
        "infra.pod.entrypoint",
        "--",
        "prefect",
        "flow-run",
        "execute",
    ]
    assert pod.env["PREFECT__FLOW_RUN_ID"] == str(flow_run_id)
    assert pod.env["PREFECT_API_URL"] == prefect_server
    assert pod.env["TTL_HOURS"] == "24" and pod.env["OW_RUNPOD_WORK_POOL"] == stack.pool.name
    wait_for_log(flow_run_id, f"hello world from RunPod pod {pod.id}")
    stack.emulator.wait_until(lambda: pod.status == "TERMINATED", 15, "the pod to be terminated")
    assert pod.container.starts == 1  # ended, not restarted


def test_min_vram_gb_per_flow_run_gets_a_gpu_with_enough_memory(reset_runpod_stack):
    stack = reset_runpod_stack
    deployment = deploy_to_pool(
        runpod_flows.say_hello, stack.pool.name, gpu_types=["NVIDIA A40", "NVIDIA A100 80GB PCIe"]
    )
    flow_run_id = submit(deployment, min_vram_gb=60)  # as the control tier passes its VRAM estimate

    assert wait_for_flow_run(flow_run_id).state.is_completed()
    assert pod_of(stack.emulator, flow_run_id).gpu.id == "NVIDIA A100 80GB PCIe"


def test_a_pool_without_runpod_credentials_crashes_the_run_saying_what_to_set(reset_runpod_stack):
    stack = reset_runpod_stack
    deployment = deploy_to_pool(runpod_flows.say_hello, stack.pool.name, runpod_credentials=None)
    flow_run = wait_for_flow_run(submit(deployment))
    assert flow_run.state.is_crashed()
    assert "The runpod_credentials job variable is not set" in flow_run.state.message


def test_env_values_with_quotes_newlines_backslashes_and_non_ascii_arrive_intact(
    reset_runpod_stack, tmp_path
):
    stack = reset_runpod_stack
    awkward = {
        "OW_QUOTES": "she said \"no\" and 'yes'",
        "OW_NEWLINES": "first line\nsecond line\r\nthird",
        "OW_BACKSLASHES": "C:\\path\\to\\ and \\n is not a newline\\",
        "OW_NON_ASCII": "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001f680",
        "OW_GRAPHQL_LOOKALIKE": '{ key: "x", value: "y" } # $var',
    }
    out_path = tmp_path / "env.json"
    deployment = deploy_to_pool(runpod_flows.record_env, stack.pool.name, env=awkward)
    flow_run_id = submit(deployment, {"names": sorted(awkward), "out_path": str(out_path)})

    assert wait_for_flow_run(flow_run_id).state.is_completed()
    assert json.loads(out_path.read_text(encoding="utf-8")) == awkward
    assert {k: v for k, v in pod_of(stack.emulator, flow_run_id).env.items() if k in awkward} == awkward


def start_a_long_run(stack, **job_variables):
    """A 300 s flow run on the shared pool, running in its pod: (flow run id, pod)."""
    deployment = deploy_to_pool(runpod_flows.sleep_for, stack.pool.name, **job_variables)
    flow_run_id = submit(deployment, {"seconds": 300})
    wait_for_flow_run(flow_run_id, until=is_running, timeout=90)
    return flow_run_id, pod_of(stack.emulator, flow_run_id)


def cancel_from_the_cli(flow_run_id) -> None:
    subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "cancel", str(flow_run_id)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_cancelling_a_running_flow_run_terminates_its_pod_within_a_poll(reset_runpod_stack):
    stack = reset_runpod_stack
    flow_run_id, pod = start_a_long_run(stack)

    cancel_from_the_cli(flow_run_id)
    cancelled_at = time.monotonic()
    stack.emulator.wait_until(lambda: pod.status == "TERMINATED", 15, "the pod to be terminated")

    assert time.monotonic() - cancelled_at < 10  # one 1 s poll, plus slack for a loaded CI machine
    assert wait_for_flow_run(flow_run_id, timeout=30).state.is_cancelled()
    stack.emulator.wait_until(lambda: not pod.container.is_up, 15, "the pod's processes to end")


def test_cancelling_a_run_whose_pod_cannot_cancel_itself_still_ends_pod_and_run(reset_runpod_stack):
    """Without `prefect flow-run execute` nothing in the pod watches for cancellation: the worker must."""
    stack = reset_runpod_stack
    flow_run_id, pod = start_a_long_run(stack, command="python -m prefect.engine")

    cancel_from_the_cli(flow_run_id)

    # The engine, killed by SIGTERM with no runner to tell it why, forces Crashed for a moment; the
    # worker keeps the run Cancelled while its pod goes down.
    flow_run = wait_for_flow_run(flow_run_id, timeout=30, until=lambda run: run.state.is_cancelled())
    time.sleep(3)
    flow_run = wait_for_flow_run(flow_run_id, timeout=30, until=lambda run: run.state.is_cancelled())
    assert f"terminating RunPod pod {pod.id}" in flow_run.state.message
    stack.emulator.wait_until(lambda: pod.terminated_by == "account", 15, "the worker to terminate the pod")


def test_a_pod_that_disappears_mid_run_gives_a_crashed_run_and_no_pod_left(reset_runpod_stack):
    stack = reset_runpod_stack
    flow_run_id, pod = start_a_long_run(stack)

    stack.emulator.vanish(pod.id)  # its host failed

    flow_run = wait_for_flow_run(flow_run_id, timeout=30)
    assert flow_run.state.is_crashed(), flow_run.state
    assert (
        f"RunPod pod {pod.id}" in flow_run.state.message
        and "disappeared while the flow run was Running" in flow_run.state.message
    )
    assert "last known status RUNNING (container up" in flow_run.state.message
    assert stack.emulator.pods() == []


def test_a_preempted_pod_whose_engine_reports_first_gives_a_crashed_run_naming_the_pod(reset_runpod_stack):
    """The pod's engine gets SIGTERM and reports the run Crashed before the pod is seen gone: the run
    still says which pod stopped under it, and why, not only the engine's "termination signal"."""
    stack = reset_runpod_stack
    # The engine run bare (as the training stage keeps Prefect's handler) forces Crashed on SIGTERM.
    flow_run_id, pod = start_a_long_run(stack, command="python -m prefect.engine")

    stack.emulator.preempt(pod.id)

    flow_run = wait_for_flow_run(flow_run_id, timeout=30)
    time.sleep(3)  # the worker's account must stay, not flicker in and out
    flow_run = wait_for_flow_run(flow_run_id, timeout=30)
    assert flow_run.state.is_crashed(), flow_run.state
    message = flow_run.state.message
    assert f"RunPod pod {pod.id}" in message and "stopped from outside the run" in message, message
    assert "termination signal" in message  # what the engine itself said is kept
    assert stack.emulator.pods() == []


def test_a_run_cancelled_and_then_crashed_between_two_polls_ends_cancelled_not_crashed(reset_runpod_stack):
    """The user cancels; before the worker's next poll the pod's engine is stopped and forces Crashed.
    The run ends Cancelled (a Crashed stage would be recovered by its job's control flow)."""
    stack = reset_runpod_stack
    flow_run_id, pod = start_a_long_run(stack, command="python -m prefect.engine", poll_interval_seconds=20)

    cancel_from_the_cli(flow_run_id)
    stack.emulator.preempt(pod.id)  # SIGTERM: the bare engine forces Crashed

    wait_for_flow_run(flow_run_id, timeout=60, until=lambda run: run.state.is_cancelled())
    time.sleep(3)
    assert wait_for_flow_run(flow_run_id, timeout=30).state.is_cancelled()
    assert stack.emulator.pods() == []


def test_a_pod_whose_container_dies_mid_run_gives_a_crashed_run_without_running_the_flow_twice(
    reset_runpod_stack,
):
    stack = reset_runpod_stack
    deployment = deploy_to_pool(runpod_flows.sleep_for, stack.pool.name)
    flow_run_id = submit(deployment, {"seconds": 300})
    wait_for_log(flow_run_id, "sleeping 300", timeout=90)
    pod = pod_of(stack.emulator, flow_run_id)

    stack.emulator.crash_container(pod.id)  # killed (out of memory, say); RunPod restarts the container

    flow_run = wait_for_flow_run(flow_run_id, timeout=60)
    assert flow_run.state.is_crashed(), flow_run.state
    assert stack.emulator.pods() == []
    assert pod.container.starts == 2
    assert sum("sleeping 300" in message for message in log_messages(flow_run_id)) == 1


def test_ttl_expiry_makes_the_pod_terminate_itself(reset_runpod_stack):
    stack = reset_runpod_stack
    deployment = deploy_to_pool(runpod_flows.sleep_for, stack.pool.name, ttl_hours=0.004)  # 14.4 s
    flow_run_id = submit(deployment, {"seconds": 300})
    wait_for_flow_run(flow_run_id, until=lambda run: run.infrastructure_pid is not None, timeout=60)
    pod = pod_of(stack.emulator, flow_run_id)

    stack.emulator.wait_until(lambda: pod.status == "TERMINATED", 60, "the pod's TTL to expire")

    assert pod.terminated_by == "pod"
    assert "TTL expired" in stack.emulator.container_log(pod.id)
    # The engine, stopped by the pod's end, may report its bare crash first; the worker's account follows.
    flow_run = wait_for_flow_run(
        flow_run_id, timeout=30, until=lambda run: "reached its TTL of 0.004 h" in (run.state.message or "")
    )
    assert flow_run.state.is_crashed()


def test_a_run_over_max_run_hours_is_crashed_and_its_pod_terminated(reset_runpod_stack):
    stack = reset_runpod_stack
    deployment = deploy_to_pool(runpod_flows.sleep_for, stack.pool.name, max_run_hours=0.004)
    flow_run_id = submit(deployment, {"seconds": 300})

    flow_run = wait_for_flow_run(flow_run_id, timeout=90)

    assert flow_run.state.is_crashed()
    # The worker's account comes before the SIGTERM that makes the engine force its own bare crash...
    assert "exceeded max_run_hours=0.004" in crashed_messages(flow_run_id)[0]
    assert pod_of(stack.emulator, flow_run_id).terminated_by == "account"
    time.sleep(FINAL_STATE_SETTLE_SECONDS + 1)  # ...and it is the state the run keeps
    assert "exceeded max_run_hours=0.004" in wait_for_flow_run(flow_run_id).state.message


def test_the_runpod_key_never_appears_in_logs_parameters_or_the_pod(runpod_pool, start_runpod_worker):
    key = runpod_pool.emulator.api_key
    worker = start_runpod_worker(PREFECT_LOGGING_LEVEL="DEBUG")
    runpod_pool.emulator.set_capacity("NVIDIA A40", 0)  # also exercise the fallback's messages
    deployment = deploy_to_pool(runpod_flows.say_hello, runpod_pool.name)
    flow_run_id = submit(deployment, {"name": "secret-check"})
    flow_run = wait_for_flow_run(flow_run_id)
    assert flow_run.state.is_completed()
    wait_for_log(flow_run_id, "hello secret-check")

    assert not [message for message in log_messages() if key in message]
    assert key not in json.dumps(flow_run.parameters) and key not in json.dumps(flow_run.job_variables or {})
    assert key not in worker.log()
    pod = pod_of(runpod_pool.emulator, flow_run_id)
    assert key not in pod.args and key not in json.dumps(pod.env)
    assert pod.env.get("RUNPOD_API_KEY") is None  # RunPod injects the pod's own key, never ours


@pytest.mark.parametrize("runpod_emulator", [{"pod_keys_can_terminate": False}], indirect=True)
def test_a_sigkilled_worker_restarted_leaves_no_orphan_pod(runpod_pool, start_runpod_worker):
    """Pods here may only stop themselves, so a finished run's pod stays until a worker sweeps it."""
    emulator = runpod_pool.emulator
    first = start_runpod_worker()
    deployment = deploy_to_pool(runpod_flows.sleep_for, runpod_pool.name)
    flow_run_id = submit(deployment, {"seconds": 3})
    wait_for_flow_run(flow_run_id, until=is_running, timeout=90)
    pod = pod_of(emulator, flow_run_id)

    first.kill_hard()
    assert wait_for_flow_run(flow_run_id, timeout=60).state.is_completed()  # the pod finishes the run alone
    emulator.wait_until(lambda: pod.status == "EXITED", 30, "the pod to stop itself")
    assert emulator.pods() == [pod]  # an orphan: stopped, still billing for its disk

    start_runpod_worker()

    emulator.wait_until(lambda: emulator.pods() == [], 30, "the restarted worker to sweep the orphan")
    assert pod.terminated_by == "account"
