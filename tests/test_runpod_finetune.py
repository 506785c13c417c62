"""The production shape: prefect.yaml deployed unchanged, with ``ow-gpu`` a ``runpod`` work pool.

A Prefect server of its own (the session's server has ``ow-gpu`` as a process pool), a process
worker for the control tier, a ``runpod`` worker launching into the emulator, and ``prefect deploy
--all`` from the project's prefect.yaml as a user runs it. The GPU stage of ``finetune/sft`` trains
inside an emulated pod; resubmitting the identical job is a cache hit that starts no pod.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.objects import StateType
from pydantic import BaseModel, Field

from infra.local import stack as local_stack
from tests.fixtures.jobs import FAST_SFT
from tests.fixtures.runpod import PROJECT_POD_ENV, RunPodProject, pods_of, runpod_project_stack
from tests.fixtures.runpod_emulator import RunPodEmulator
from tests.fixtures.stack import Stack


@pytest.fixture(scope="module")
def runpod_project(prefect_server, conversations_path: Path, tmp_path_factory) -> Iterator[RunPodProject]:
    with runpod_project_stack(tmp_path_factory.mktemp("runpod-project"), conversations_path) as project:
        yield project


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
    assert_cost_is_price_times_lifetime(record["cost"], [pod])
    summary = next(artifact.data for artifact in stack.artifacts(first.id) if artifact.type == "markdown")
    assert f"- cost: ${record['cost']['usd']:.4f} over 1 pod (" in summary  # the job's summary in the UI

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
    assert_cost_is_price_times_lifetime(record["cost"], new_pods)  # the lost pod's time is paid for too
    assert "Recovering job" in stack.logs(control.id)
    # Its adapter is the one an uninterrupted run makes. On CPU a resumed run_finetune reproduced the
    # uninterrupted adapter bit for bit (max |Δ| 0.0 over 360 steps, resumed at step 40, weights up to
    # ≈ 0.2); the bounds leave room for reductions ordered differently on other hardware, and are far
    # from what a wrong resume gives (another LoRA init, say, measured cosine ≈ 0, max |Δ| ≈ 0.36).
    difference = _difference_from_an_uninterrupted_run(stack, job_id, record["params"])
    assert difference["cosine"] > 0.9999 and difference["max_abs"] < 1e-4, difference


def assert_cost_is_price_times_lifetime(cost: dict, pods: list) -> None:
    """The job's cost in result.json is exactly its emulated pods, each at its price × (terminated − created)."""
    assert sorted(charge["pod_id"] for charge in cost["pods"]) == sorted(pod.id for pod in pods)
    expected = sum(pod.price_per_hour * (pod.terminated_at - pod.created_at) / 3600 for pod in pods)
    assert cost["usd"] == pytest.approx(expected, abs=1e-5) and cost["usd"] > 0
    assert cost["billed"] and cost["note"] == ""


def _job_id_once_labelled(control_run_id) -> str | None:
    """The job ID the control flow labelled itself with (``ow-job:<id>``), once it has."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        tags = client.read_flow_run(control_run_id).tags
    return next((tag.split(":", 1)[1] for tag in tags if tag.startswith("ow-job:")), None)


def test_recovery_stops_after_max_recoveries_and_the_run_ends_crashed_with_every_attempt_listed(
    runpod_project: RunPodProject, tiny_model_dir: Path
):
    """Every pod the job gets is lost: after the first attempt and OW_MAX_RECOVERIES=1 recovery the
    control flow gives up, Crashed (the infrastructure failed, not the job), naming each attempt."""
    stack, emulator = runpod_project.stack, runpod_project.emulator
    params = {"model": str(tiny_model_dir), "training_file": runpod_project.training_file, **FAST_SFT}
    params |= {"epochs": 60, "seed": 101}  # long enough to lose the pod while it trains
    control = _submit_with_control_env(
        "finetune/sft", params, {"OW_MAX_RECOVERIES": "1", "OW_RECOVERY_DELAY_SECONDS": "1"}
    )
    job_id = emulator.wait_until(lambda: _job_id_once_labelled(control.id), 120, "the control flow's job ID")

    lost = []
    for attempt in (1, 2):
        stage = emulator.wait_until(
            lambda: _running_stage(stack, job_id, seen=[run.id for run, _ in lost]), 300, f"attempt {attempt} running"
        )
        (pod,) = pods_of(emulator, stage.id)
        emulator.vanish(pod.id)
        lost.append((stage, pod))

    final = stack.wait(control.id, timeout=300)
    assert final.state.type == StateType.CRASHED, (final.state.type, final.state.message)
    stages = sorted(stack.gpu_stage_runs(job_id), key=lambda run: run.created)
    assert [run.id for run in stages] == [stage.id for stage, _ in lost]  # no third attempt
    assert [run.state.type for run in stages] == [StateType.CRASHED, StateType.CRASHED]
    message = final.state.message
    assert "lost its infrastructure on every attempt" in message and "OW_MAX_RECOVERIES" in message
    for number, (run, (_, pod)) in enumerate(zip(stages, lost, strict=True), start=1):
        why = " ".join(run.state.message.split())
        assert f"- attempt {number}: stage run {run.name} ({run.id}) in pod {pod.id}: Crashed: {why}" in message
        assert pod.id in why  # the worker's own account of the loss names the pod
    assert len(_pods_of_job(emulator, stages)) == 2
    emulator.wait_until(lambda: emulator.pods() == [], 60, "no pod left")


def test_a_failure_of_the_jobs_own_code_is_not_retried(runpod_project: RunPodProject, tmp_path: Path):
    """The job's script exits 3 inside its pod: the job fails at once, on one pod, with the script's output."""
    from client import OpenWeights
    from tests.fixtures.jobs import register_script_job

    stack, emulator = runpod_project.stack, runpod_project.emulator
    script = tmp_path / "fails.py"
    script.write_text("print('about to fail in the pod')\nraise SystemExit(3)\n")
    job_class = register_script_job("runpod_fails_test", script, _WordParams)

    control = stack.run("custom/run", job_class(OpenWeights()).definition(word="x"), timeout=300)

    assert control.state.type == StateType.FAILED, (control.state.type, control.state.message)
    assert "exited with code 3" in control.state.message
    job_id = stack.job_id_of(control)
    stages = stack.gpu_stage_runs(job_id)
    assert [run.state.type for run in stages] == [StateType.FAILED]
    assert len(_pods_of_job(emulator, stages)) == 1
    assert "Recovering job" not in stack.logs(control.id)
    emulator.wait_until(lambda: emulator.pods() == [], 60, "no pod left")


def test_a_cancelled_job_is_not_recovered(runpod_project: RunPodProject, tiny_model_dir: Path):
    """Cancelling the control flow while its stage trains in a pod ends both, and starts no other pod."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    stack, emulator = runpod_project.stack, runpod_project.emulator
    params = {"model": str(tiny_model_dir), "training_file": runpod_project.training_file, **FAST_SFT}
    params |= {"epochs": 60, "seed": 102}
    control = _submit_with_control_env("finetune/sft", params, {"OW_RECOVERY_DELAY_SECONDS": "1"})
    job_id = emulator.wait_until(lambda: _job_id_once_labelled(control.id), 120, "the control flow's job ID")
    stage = emulator.wait_until(lambda: _running_stage(stack, job_id, seen=[]), 300, "the stage running")
    emulator.wait_until(lambda: "step 1:" in stack.logs(stage.id), 300, "training to start in the pod")

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(control.id, Cancelling(message="cancelled by the test"))

    final = stack.wait(control.id, timeout=120)
    assert final.state.type == StateType.CANCELLED, (final.state.type, final.state.message)
    emulator.wait_until(lambda: stack.wait(stage.id, timeout=60), 60, "the stage to end")
    emulator.wait_until(lambda: emulator.pods() == [], 60, "no pod left")
    time.sleep(3)  # a recovery would start 1 s after the stage ended: give one the chance to appear
    stages = stack.gpu_stage_runs(job_id)
    assert [run.state.type for run in stages] == [StateType.CANCELLED]
    assert len(_pods_of_job(emulator, stages)) == 1
    assert not stack.store.exists(f"jobs/{job_id}/result.json")


@pytest.mark.parametrize(
    ("bound", "said"),
    [
        # The TTL's warning stops the run inside a pod still up: the engine's bare crash comes seconds
        # before the worker sees the pod end and gives its account.
        ({"ttl_hours": 0.006, "env": {**PROJECT_POD_ENV, "OW_TTL_WARNING_SECONDS": "8"}}, "reached its TTL of 0.006 h"),
        # The worker ends the pod: its account, not the engine's, is what the job decides from.
        ({"max_run_hours": 0.003}, "exceeded max_run_hours=0.003"),
    ],
    ids=["ttl-warning", "max_run_hours"],
)
def test_a_stage_ended_by_a_bound_the_user_set_is_not_recovered(
    runpod_project: RunPodProject, tmp_path: Path, bound: dict, said: str
):
    """A bound the user set (the pod's TTL, the pool's max_run_hours) ends the GPU stage mid-run: the
    job ends Failed on that one pod, naming the bound. Another pod would end the same way, so a
    recovery would only bill the bound again."""
    from prefect.client.orchestration import get_client

    from client import OpenWeights
    from tests.fixtures.jobs import register_script_job

    stack, emulator = runpod_project.stack, runpod_project.emulator
    script = tmp_path / "sleeps.py"
    script.write_text("import time\nprint('sleeping past the bound', flush=True)\ntime.sleep(300)\n")
    job_class = register_script_job(f"runpod_bound_{next(iter(bound))}_test", script, _WordParams)
    parameters = job_class(OpenWeights()).definition(word=next(iter(bound)))
    with get_client(sync_client=True) as client:
        gpu_stage = client.read_deployment_by_name("gpu-stage/custom")
        client.update_deployment(gpu_stage.id, DeploymentUpdate(job_variables={**gpu_stage.job_variables, **bound}))
        try:
            control = _submit_with_control_env(
                "custom/run", parameters, {"OW_MAX_RECOVERIES": "1", "OW_RECOVERY_DELAY_SECONDS": "1"}
            )
            final = stack.wait(control.id, timeout=300)
        finally:
            client.update_deployment(gpu_stage.id, DeploymentUpdate(job_variables=gpu_stage.job_variables))

    assert final.state.type == StateType.FAILED, (final.state.type, final.state.message)
    assert said in final.state.message
    stages = stack.gpu_stage_runs(stack.job_id_of(final))
    assert [run.state.type for run in stages] == [StateType.CRASHED]
    assert said in stages[0].state.message
    assert len(_pods_of_job(emulator, stages)) == 1
    assert "Recovering job" not in stack.logs(control.id)
    emulator.wait_until(lambda: emulator.pods() == [], 60, "no pod left")


class _WordParams(BaseModel):
    word: str = Field(min_length=1)


def _submit_with_control_env(deployment: str, parameters: dict, env: dict[str, str]):
    """A flow run of the deployment whose control-flow process gets ``env`` (a per-run job variable, as
    ``prefect deployment run --job-variable env=…`` sets it): the recovery settings of this run only."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        return client.create_flow_run_from_deployment(found.id, parameters=parameters, job_variables={"env": env})


def _running_stage(stack: Stack, job_id: str, seen: list):
    """A GPU-stage run of the job that is Running, other than those in ``seen``."""
    return next(
        (
            run
            for run in stack.gpu_stage_runs(job_id)
            if run.id not in seen and run.state is not None and run.state.type == StateType.RUNNING
        ),
        None,
    )


def _pods_of_job(emulator: RunPodEmulator, stage_runs) -> list:
    return [pod for run in stage_runs for pod in pods_of(emulator, run.id)]


def _difference_from_an_uninterrupted_run(stack: Stack, job_id: str, params: dict) -> dict[str, float]:
    """How far the job's stored adapter is from one trained in this process, without interruption,
    from the same validated parameters (so the same seed, data and steps) into a store of its own.

    Both start from the same LoRA weights only if the recipe draws them from the job's seed: a fresh
    process's torch RNG is seeded at random, so an unseeded init differs from run to run."""
    import tempfile

    import torch
    from safetensors.torch import load_file

    from compute.training.recipe import FinetuneInputs, run_finetune
    from jobs.model_refs import resolve_model
    from jobs.registry import get_job_spec
    from store.artifact_store import ArtifactStore
    from store.files import download_file

    config = get_job_spec("finetune").params_model.model_validate(params)
    with tempfile.TemporaryDirectory(prefix="uninterrupted-") as scratch:
        root = Path(scratch)
        store = ArtifactStore(str(root / "store"))
        run_finetune(
            config,
            FinetuneInputs(
                job_id="uninterrupted",
                model=resolve_model(config.model, store, root / "cache"),
                training_path=download_file(stack.store, config.training_file, root / "files"),
                work_dir=root / "work",
                store=store,
            ),
        )
        weights = "adapter/adapter_model.safetensors"
        uninterrupted = load_file(store.download_file(f"jobs/uninterrupted/{weights}", root / "a.safetensors"))
        recovered = load_file(stack.store.download_file(f"jobs/{job_id}/{weights}", root / "b.safetensors"))
    assert uninterrupted.keys() == recovered.keys()
    a = torch.cat([uninterrupted[name].flatten().double() for name in sorted(uninterrupted)])
    b = torch.cat([recovered[name].flatten().double() for name in sorted(recovered)])
    return {
        "max_abs": float((a - b).abs().max()),
        "max_abs_weight": float(a.abs().max()),
        "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
    }
