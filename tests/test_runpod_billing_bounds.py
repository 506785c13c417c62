"""Billing is bounded under every fault: each test is the fault, and ends with zero pods left within the
sweep interval plus the start timeout, whether or not the worker that launched the pod is alive."""

from __future__ import annotations

import uuid

import anyio
import pytest
from prefect.exceptions import InfrastructureNotFound

from blocks.runpod import RunPodCredentials
from infra.runpod.api import RetryPolicy, RunPodClient
from infra.runpod.hardware import HardwareOption
from infra.runpod.launch import GpuCatalogue, launch_pod
from infra.runpod.models import PodSpec
from infra.worker.pod_spec import FLOW_RUN_ID_ENV, WORK_POOL_ENV, pod_name_for
from infra.worker.runpod_worker import RunPodJobConfiguration, RunPodWorker
from tests import runpod_flows
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

SWEEP_S = 2  # OW_RUNPOD_SWEEP_INTERVAL_SECONDS of the test workers


@pytest.mark.parametrize("runpod_emulator", [{"boot_delay_s": 5}], indirect=True)  # STARTING, then ERROR
def test_a_pod_that_never_reaches_the_entrypoint_is_ended_after_its_worker_died(
    runpod_pool, start_runpod_worker
):
    """(a) A bad image: the pod bills but no watchdog ever runs in it, and its run stays Pending."""
    emulator = runpod_pool.emulator
    emulator.bad_images.add("ow-broken:1")
    first = start_runpod_worker()
    deployment = deploy_to_pool(runpod_flows.say_hello, runpod_pool.name, pod_start_timeout_seconds=8)
    flow_run_id = submit(deployment, image="ow-broken:1")  # per run: `deploy` sets the deployment's image
    emulator.wait_until(lambda: pods_of(emulator, flow_run_id), 60, "the pod to be created")
    (pod,) = pods_of(emulator, flow_run_id)

    first.kill_hard()  # nobody watches the pod now, before it fails
    assert pod.status in ("PROVISIONING", "STARTING")
    start_runpod_worker()

    emulator.wait_until(lambda: pod.status == "TERMINATED", SWEEP_S + 8 + 20, "the sweep to end the pod")
    assert emulator.pods() == []
    flow_run = wait_for_flow_run(flow_run_id, timeout=30)
    assert flow_run.state.is_crashed() and pod.id in flow_run.state.message


def test_a_create_whose_last_attempt_timed_out_never_leaves_a_second_pod(runpod_emulator):
    """(b) Every retry fails, the last one after RunPod made the pod: the launcher finds that pod by
    name instead of creating another on the next GPU type."""
    client = RunPodClient(
        runpod_emulator.api_key, runpod_emulator.url, retry=RetryPolicy(attempts=3, base_delay_s=0.01)
    )
    runpod_emulator.inject_fault("createPod", times=2, http_status=503)
    runpod_emulator.inject_fault("createPod", times=1, http_status=504, after_effect=True)
    plan = GpuCatalogue().plan(
        client,
        options=[HardwareOption(gpu_count=1, gpu_type_ids=("NVIDIA A40", "NVIDIA RTX A6000"))],
        min_vram_gb=0,
        cloud_type="SECURE",
        price_overrides={},
    )
    spec = PodSpec(name="ow-gpu-once", image="img", args="sleep 60")

    launched = launch_pod(client, spec, plan)

    assert [p.id for p in runpod_emulator.pods()] == [launched.pod_id]
    assert launched.candidate.gpu_type_id == "NVIDIA A40"


def test_a_doubled_pod_of_the_same_name_is_terminated_after_the_launch(runpod_emulator):
    """(b) A create answered after its caller gave up made a pod the launcher never saw: once a pod is
    launched, any other live pod of its name goes."""
    client = RunPodClient(runpod_emulator.api_key, runpod_emulator.url)
    spec = PodSpec(name="ow-gpu-double", image="img", args="sleep 60")
    stray = client.create_pod(spec.model_copy(update={"gpu_type_id": "NVIDIA A40"}))
    plan = GpuCatalogue().plan(
        client,
        options=[HardwareOption(gpu_count=1, gpu_type_ids=("NVIDIA RTX A6000",))],
        min_vram_gb=0,
        cloud_type="SECURE",
        price_overrides={},
    )

    launched = launch_pod(client, spec, plan)

    assert launched.pod_id != stray.id
    assert [p.id for p in runpod_emulator.pods()] == [launched.pod_id]


def test_the_sweep_covers_credentials_a_deployment_overrides(prefect_server, runpod_emulator, tmp_path):
    """(d) The pool's default account and another account one deployment uses: after a restart the
    worker sweeps both, not only the default."""
    with make_emulator(tmp_path / "second-account") as other_account:
        pool = create_runpod_pool(runpod_emulator)
        try:
            block = f"other-{uuid.uuid4().hex[:6]}"
            block_id = RunPodCredentials(api_key=other_account.api_key, api_base_url=other_account.url).save(
                block
            )
            deploy_to_pool(
                runpod_flows.say_hello,
                pool.name,
                runpod_credentials={"$ref": {"block_document_id": str(block_id)}},
            )
            gone_run = uuid.uuid4()  # a run that no longer exists: its pod is an orphan
            orphan = RunPodClient(other_account.api_key, other_account.url).create_pod(
                PodSpec(
                    name=pod_name_for(pool.name, gone_run),
                    image="img",
                    gpu_type_id="NVIDIA A40",
                    args="sleep 300",
                    env={WORK_POOL_ENV: pool.name, FLOW_RUN_ID_ENV: str(gone_run)},
                )
            )

            worker = start_worker_process(pool.name, tmp_path / "workers")
            try:
                other_account.wait_until(
                    lambda: other_account.pods() == [], SWEEP_S + 30, "the sweep of the other account"
                )
            finally:
                worker.stop()
            assert other_account.all_pods[orphan.id].terminated_by == "account"
        finally:
            delete_runpod_pool(pool)


def test_kill_infrastructure_refuses_a_pod_this_pool_did_not_launch(runpod_emulator):
    """(e) An infrastructure PID naming another pod of the account (a dev pod, another pool's) is refused."""
    client = RunPodClient(runpod_emulator.api_key, runpod_emulator.url)
    dev_pod = client.create_pod(PodSpec(name="ow-dev-me-abc123", image="img", gpu_type_id="NVIDIA A40"))
    other_pool = client.create_pod(
        PodSpec(
            name=pod_name_for("someone-else", uuid.uuid4()),
            image="img",
            gpu_type_id="NVIDIA A40",
            env={WORK_POOL_ENV: "someone-else"},
        )
    )
    worker = RunPodWorker(work_pool_name="kill-test")
    configuration = RunPodJobConfiguration(
        runpod_credentials=RunPodCredentials(
            api_key=runpod_emulator.api_key, api_base_url=runpod_emulator.url
        )
    )

    for pod in (dev_pod, other_pool):
        with pytest.raises(InfrastructureNotFound, match="not launched by work pool 'kill-test'"):
            anyio.run(lambda pod_id=pod.id: worker.kill_infrastructure(pod_id, configuration))

    assert {p.id for p in runpod_emulator.pods()} == {dev_pod.id, other_pool.id}
