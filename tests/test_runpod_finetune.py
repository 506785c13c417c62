"""The production shape: prefect.yaml deployed unchanged, with ``ow-gpu`` a ``runpod`` work pool.

A Prefect server of its own (the session's server has ``ow-gpu`` as a process pool), a process
worker for the control tier, a ``runpod`` worker launching into the emulator, and ``prefect deploy
--all`` from the project's prefect.yaml as a user runs it. The GPU stage of ``finetune/sft`` trains
inside an emulated pod; resubmitting the identical job is a cache hit that starts no pod.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from infra.local import stack as local_stack
from tests.fixtures.jobs import FAST_SFT
from tests.fixtures.runpod import create_runpod_pool, make_emulator, start_worker_process
from tests.fixtures.runpod_emulator import RunPodEmulator
from tests.fixtures.stack import Stack


@dataclass
class RunPodProject:
    stack: Stack
    emulator: RunPodEmulator
    training_file: str


@pytest.fixture(scope="module")
def runpod_project(prefect_server, conversations_path: Path, tmp_path_factory) -> Iterator[RunPodProject]:
    root = tmp_path_factory.mktemp("runpod-project")
    port = local_stack.free_port()
    url = local_stack.api_url(port)
    server = local_stack.start_server(root / "prefect-server", port, root / "logs" / "server.log", ui=False)
    saved_env = dict(os.environ)
    started = [server]
    try:
        local_stack.wait_healthy(url, timeout=120, process=server)
        os.environ.update({"PREFECT_API_URL": url, "OW_HOME": str(root / "ow")})
        with temporary_settings(updates={PREFECT_API_URL: url}), make_emulator(root) as emulator:
            from blocks.storage import load_store_block

            load_store_block()  # this server's default store: a fresh directory, so no earlier cache
            create_runpod_pool(
                emulator,
                name=local_stack.GPU_POOL,
                env={"OW_TTL_CHECK_SECONDS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
            )
            local_stack.ensure_process_pool(local_stack.CONTROL_POOL)
            env = local_stack.worker_env()
            started.append(
                local_stack.start_worker(
                    local_stack.CONTROL_POOL, "process", root / "logs" / "control.log", env=env
                )
            )
            gpu_worker = start_worker_process(local_stack.GPU_POOL, root / "logs")
            started.append(gpu_worker.process)
            local_stack.deploy_project(env=env)
            stack = Stack(api_url=url, home=root / "ow")
            training_file = stack.upload(conversations_path, "conversations")
            yield RunPodProject(stack=stack, emulator=emulator, training_file=training_file)
    finally:
        for process in reversed(started):
            local_stack.stop_process(process.pid)
        os.environ.clear()
        os.environ.update(saved_env)


def test_finetune_from_prefect_yaml_trains_in_a_runpod_pod_and_a_duplicate_starts_no_pod(
    runpod_project: RunPodProject, tiny_model_dir: Path
):
    stack, emulator = runpod_project.stack, runpod_project.emulator
    params = {"model": str(tiny_model_dir), "training_file": runpod_project.training_file, **FAST_SFT}

    first = stack.run("finetune/sft", params, timeout=600)

    assert first.state.type == StateType.COMPLETED, first.state.message
    job_id = stack.job_id_of(first)
    [stage] = stack.gpu_stage_runs(job_id)
    [pod] = emulator.all_pods.values()
    assert stage.infrastructure_pid == pod.id
    assert pod.name == f"ow-{local_stack.GPU_POOL}-{stage.id}"
    record = stack.store.read_json(f"jobs/{job_id}/result.json")
    assert stack.store.exists(f"jobs/{job_id}/adapter/adapter_config.json")
    assert record["metrics"]["final_loss"] is not None
    emulator.wait_until(lambda: pod.desired_status == "TERMINATED", 30, "the pod to be terminated")

    again = stack.run("finetune/sft", params, timeout=300)

    assert again.state.type == StateType.COMPLETED, again.state.message
    assert stack.job_id_of(again) == job_id
    assert len(emulator.all_pods) == 1  # the cache hit started no second pod
    assert len(stack.gpu_stage_runs(job_id)) == 1


def test_a_pod_lost_mid_training_is_recovered_on_a_new_pod_from_its_last_checkpoint(
    runpod_project: RunPodProject, tiny_model_dir: Path
):
    """The pod vanishes (its host failed) after a checkpoint: without any new submission the job
    completes under the same job ID on one more pod, resuming from that checkpoint."""
    stack, emulator = runpod_project.stack, runpod_project.emulator
    params = {
        "model": str(tiny_model_dir),
        "training_file": runpod_project.training_file,
        **FAST_SFT,
        "epochs": 60,  # 360 steps: time to lose the pod after a checkpoint, before the end
        "save_steps": 20,
    }
    pods_before = set(emulator.all_pods)
    control = stack.submit("finetune/sft", params)
    job_id = emulator.wait_until(lambda: _job_id_once_labelled(control.id), 120, "the control flow's job ID")
    checkpoints = f"jobs/{job_id}/checkpoints"
    store = stack.store
    emulator.wait_until(
        lambda: any(key.endswith("/COMPLETE") for key in store.list(checkpoints)),
        300,
        "a complete checkpoint in the store",
    )
    (lost_pod,) = [pod for pod_id, pod in emulator.all_pods.items() if pod_id not in pods_before]

    emulator.vanish(lost_pod.id)

    final = stack.wait(control.id, timeout=600)
    assert final.state.type == StateType.COMPLETED, final.state.message
    assert stack.job_id_of(final) == job_id
    record = stack.store.read_json(f"jobs/{job_id}/result.json")
    assert record["details"]["resumed_from_step"] > 0
    stages = sorted(stack.gpu_stage_runs(job_id), key=lambda run: run.created)
    assert [run.state.type for run in stages] == [StateType.CRASHED, StateType.COMPLETED]
    new_pods = [pod for pod_id, pod in emulator.all_pods.items() if pod_id not in pods_before]
    assert len(new_pods) == 2  # the lost one and exactly one more
    emulator.wait_until(lambda: emulator.pods() == [], 60, "no pod left")
    assert "Recovering job" in stack.logs(control.id)


def _job_id_once_labelled(control_run_id) -> str | None:
    """The job ID the control flow labelled itself with (``ow-job:<id>``), once it has."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        tags = client.read_flow_run(control_run_id).tags
    return next((tag.split(":", 1)[1] for tag in tags if tag.startswith("ow-job:")), None)
