"""Recovery cost: GPU-seconds paid for an SFT job whose pod is lost at 60 % of its steps, against the
same job uninterrupted.

The production shape on the RunPod emulator, as ``tests/test_runpod_finetune.py`` has it: prefect.yaml
deployed unchanged, ``ow-gpu`` a ``runpod`` work pool, a process worker for the control flows and a
``runpod`` worker launching into the emulator. Each round trains two jobs of the same size (another
seed each, so another job ID and no cache hit): the baseline runs uninterrupted; ours loses its host
once the pod's log reports 60 % of the steps, and automatic recovery finishes it on a new pod from its
last complete checkpoint. Checkpoints are taken every 10 % of the steps (``save_steps = max_steps / 10``).
The loss is the worst kind: the pod's processes are SIGKILLed, then the pod vanishes. (``emulator.vanish``
alone stops the container with SIGTERM and a grace period, in which training saves a final checkpoint,
``compute/training/stop_request.py``, so almost nothing is lost: one such run measured 1.15.)

GPU-seconds are what RunPod bills: for every pod of the job, (terminated − created) × its GPU count,
from the emulator's pod records. The wait between the loss and the next pod (``OW_RECOVERY_DELAY_SECONDS``,
10 s by default) holds no pod and costs nothing; each pod's start-up (engine, imports, model load)
and the steps lost since the last checkpoint do. Target: ratio ≤ 1.25. The last line is one JSON object.

    python bench/recovery.py [MAX_STEPS] [ROUNDS] [KILL_AT]

``KILL_AT`` (default 0.6) is the fraction of the steps at which the host is lost. By the time step
600 of 1000 shows in the pod's log its checkpoint is usually stored, so 0.6 loses almost no steps; 0.69
loses nearly a whole interval, the most a 10 % interval allows.
"""

from __future__ import annotations

import json
import re
import sys
import time
from contextlib import contextmanager

from harness import HOME, job_record, log, median, sft_bench_inputs, sft_flow_params, submit_and_wait

DEFAULT_KILL_AT = 0.6
CHECKPOINT_FRACTION = 0.1
_STEP_LINE = re.compile(r"\bstep (\d+):")


@contextmanager
def runpod_stack():
    """Server, store block, a ``runpod`` ``ow-gpu`` pool on the emulator, control and runpod workers,
    prefect.yaml deployed; yields the emulator. Torn down after."""
    import os

    from infra.local import stack as local_stack
    from tests.fixtures.runpod import create_runpod_pool, make_emulator, start_worker_process

    port = int(os.environ["PREFECT_API_URL"].rsplit(":", 1)[1].split("/")[0])
    processes = [local_stack.start_server(HOME / "prefect-server", port, HOME / "logs" / "server.log", ui=False)]
    try:
        local_stack.wait_healthy(os.environ["PREFECT_API_URL"], timeout=120, process=processes[0])
        from blocks.storage import load_store_block

        load_store_block()
        with make_emulator(HOME) as emulator:
            create_runpod_pool(
                emulator,
                name=local_stack.GPU_POOL,
                env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
            )
            local_stack.ensure_control_pool()
            env = local_stack.worker_env()
            processes.append(
                local_stack.start_worker(local_stack.CONTROL_POOL, local_stack.CONTROL_WORKER_TYPE, HOME / "logs" / "control.log", env=env)
            )
            gpu_worker = start_worker_process(local_stack.GPU_POOL, HOME / "logs")
            processes.append(gpu_worker.process)
            local_stack.deploy_project(env=env)
            log(f"stack up: Prefect at {os.environ['PREFECT_API_URL']}, RunPod emulator at {emulator.url}")
            yield emulator
    finally:
        for process in reversed(processes):
            local_stack.stop_process(process.pid)


def steps_done(emulator, pod) -> int:
    """The last training step the pod's own log reports (read from its container log: no API delay)."""
    steps = [int(match) for match in _STEP_LINE.findall(emulator.container_log(pod.id))]
    return max(steps, default=0)


def lose_host(emulator, pod) -> None:
    """The pod's host fails: its processes die at once (no final checkpoint), then the pod is gone."""
    pod.container.crash()  # SIGKILL to the pod's process tree; the container would restart it, but:
    emulator.vanish(pod.id)


def kill_at_progress(emulator, pods_before: set[str], step: int, timeout: float = 1800) -> tuple[str, int]:
    """Lose the host of the job's first pod once it reports ``step``; (pod ID, step it had reached)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [pod for pod_id, pod in emulator.all_pods.items() if pod_id not in pods_before]
        if new:
            reached = steps_done(emulator, new[0])
            if reached >= step:
                lose_host(emulator, new[0])
                return new[0].id, reached
        time.sleep(0.2)
    raise TimeoutError(f"the job's pod did not reach step {step} within {timeout:.0f} s")


def gpu_seconds(emulator, pod_ids: list[str], timeout: float = 120) -> float:
    """(terminated − created) × GPU count, summed over the pods, once every one is terminated."""
    deadline = time.monotonic() + timeout
    pods = [emulator.all_pods[pod_id] for pod_id in pod_ids]
    while any(pod.terminated_at is None for pod in pods):
        if time.monotonic() > deadline:
            raise TimeoutError(f"pods {pod_ids} not all terminated after the job ended")
        time.sleep(0.5)
    return sum((pod.terminated_at - pod.created_at) * pod.gpu_count for pod in pods)


def run_job(emulator, params: dict, kill_at_step: int | None) -> dict:
    """Submit ``finetune/sft`` and wait; kill its pod at ``kill_at_step`` if given. What it cost."""
    import threading

    pods_before = set(emulator.all_pods)
    killed: dict = {}
    killer = None
    if kill_at_step is not None:

        def kill() -> None:
            killed["pod"], killed["step"] = kill_at_progress(emulator, pods_before, kill_at_step)

        killer = threading.Thread(target=kill, name="pod-killer", daemon=True)
        killer.start()
    run, wall = submit_and_wait("finetune/sft", params)
    if killer is not None:
        killer.join(timeout=5)
    assert run.state.is_completed(), run.state.message
    record = job_record(run)
    pod_ids = [pod_id for pod_id in emulator.all_pods if pod_id not in pods_before]
    return {
        "gpu_seconds": gpu_seconds(emulator, pod_ids),
        "pods": len(pod_ids),
        "wall_seconds": wall,
        "train_runtime": record["metrics"].get("train_runtime"),
        "resumed_from_step": record["details"].get("resumed_from_step", 0),
        "killed_at_step": killed.get("step"),
    }


def main(max_steps: int, rounds: int, kill_at: float) -> None:
    model_dir, data, settings = sft_bench_inputs(max_steps)
    save_steps = max(1, round(max_steps * CHECKPOINT_FRACTION))
    kill_at_step = round(max_steps * kill_at)
    results = []
    with runpod_stack() as emulator:
        from blocks.storage import load_artifact_store
        from store.files import upload_file

        file_id = upload_file(load_artifact_store(), data, "conversations").id
        for round_number in range(rounds):
            base = {**settings, "save_steps": save_steps}
            # Another seed for each job: another job ID, so neither is a cache hit of an earlier one.
            baseline = run_job(emulator, sft_flow_params(model_dir, file_id, {**base, "seed": 1000 + 2 * round_number}), None)
            log(f"round {round_number}: uninterrupted {baseline['gpu_seconds']:.1f} GPU-s on {baseline['pods']} pod")
            ours = run_job(
                emulator, sft_flow_params(model_dir, file_id, {**base, "seed": 1001 + 2 * round_number}), kill_at_step
            )
            log(
                f"round {round_number}: pod lost at step {ours['killed_at_step']}, resumed from step "
                f"{ours['resumed_from_step']}: {ours['gpu_seconds']:.1f} GPU-s on {ours['pods']} pods "
                f"({ours['gpu_seconds'] / baseline['gpu_seconds']:.3f}x)"
            )
            results.append((baseline, ours))
    ours_gpu = median([ours["gpu_seconds"] for _, ours in results])
    baseline_gpu = median([baseline["gpu_seconds"] for baseline, _ in results])
    print(
        json.dumps(
            {
                "metric": "recovery_gpu_seconds_ratio",
                "value": round(ours_gpu / baseline_gpu, 3),
                "unit": "ratio",
                "ours_gpu_seconds": round(ours_gpu, 1),
                "baseline": round(baseline_gpu, 1),
                "target": 1.25,
                "round_ratios": [round(ours["gpu_seconds"] / baseline["gpu_seconds"], 3) for baseline, ours in results],
                "killed_at_steps": [ours["killed_at_step"] for _, ours in results],
                "resumed_from_steps": [ours["resumed_from_step"] for _, ours in results],
                "pods_ours": [ours["pods"] for _, ours in results],
                "wall_seconds_ours": [round(ours["wall_seconds"], 1) for _, ours in results],
                "wall_seconds_baseline": [round(baseline["wall_seconds"], 1) for baseline, _ in results],
                "max_steps": max_steps,
                "save_steps": save_steps,
                "kill_at_step": kill_at_step,
                "rounds": rounds,
            }
        )
    )


if __name__ == "__main__":
    # 1000 steps ≈ 150 s of training here: long enough that a pod's start-up (≈ 20-30 s on the
    # emulator) does not dominate, as it would not on a real multi-hour job.
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 1000,
        int(sys.argv[2]) if len(sys.argv) > 2 else 2,
        float(sys.argv[3]) if len(sys.argv) > 3 else DEFAULT_KILL_AT,
    )
