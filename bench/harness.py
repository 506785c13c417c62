"""Shared set-up for the benchmarks: an isolated embedded default (own server, workers, store).

Each benchmark imports this module *first*: it points Prefect at a fresh home and a free port
before Prefect is imported, exactly as the test suite does.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.local import stack as local_stack  # noqa: E402

HOME = Path(tempfile.mkdtemp(prefix="ow-bench-"))
PORT = local_stack.free_port()
os.environ.update(
    {
        "OW_HOME": str(HOME / "ow"),
        "PREFECT_HOME": str(HOME / "prefect-client"),
        "PREFECT_API_URL": local_stack.api_url(PORT),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def embedded_stack():
    """Server + store block + pools + control and GPU workers + deployments; torn down after."""
    processes = [local_stack.start_server(HOME / "prefect-server", PORT, HOME / "logs" / "server.log", ui=False)]
    try:
        local_stack.wait_healthy(os.environ["PREFECT_API_URL"], timeout=120, process=processes[0])
        from blocks.storage import load_store_block

        load_store_block()
        env = local_stack.worker_env()
        local_stack.ensure_control_pool()
        local_stack.ensure_process_pool(local_stack.GPU_POOL)
        for pool, name, worker_type in (
            (local_stack.CONTROL_POOL, "control", local_stack.CONTROL_WORKER_TYPE),
            (local_stack.GPU_POOL, "gpu", "process"),
        ):
            processes.append(local_stack.start_worker(pool, worker_type, HOME / "logs" / f"worker-{name}.log", env=env))
        local_stack.deploy_project(env=env)
        yield
    finally:
        for process in reversed(processes):
            local_stack.stop_process(process.pid)


def submit_and_wait(deployment: str, parameters: dict, timeout: float = 3600):
    """Create a flow run as `prefect deployment run` does; returns (run, seconds to a final state).

    The seconds are the server's own: from the run's creation to its final state's timestamp.
    The wait listens to the run's state events (Prefect's ``wait_for_flow_run``) instead of
    polling: a client asking 20 times a second kept a 2-core machine's server busy enough to
    slow the job it measured, and even once a second is load the baseline does not carry.
    """
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.flow_runs import wait_for_flow_run

    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        run = client.create_flow_run_from_deployment(found.id, parameters=parameters)
    run = asyncio.run(wait_for_flow_run(run.id, timeout=int(timeout)))
    return run, (run.state.timestamp - run.created).total_seconds()


def run_plain_trl(model_dir: Path, data_path: Path, settings: dict, output_dir: Path) -> dict:
    """The baseline: bench/plain_trl_sft.py in its own process; returns its report plus wall time."""
    command = [sys.executable, str(ROOT / "bench" / "plain_trl_sft.py"), str(model_dir), str(data_path), str(output_dir), json.dumps(settings)]
    started = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.monotonic() - started
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return {**report, "wall_seconds": wall}


def median(values: list[float]) -> float:
    return statistics.median(values)


# The SFT benchmarks' shared setting: a model larger than the tests', so training (not start-up)
# dominates as it does in real jobs; the same data and hyperparameters for ours and the baseline.
SFT_SETTINGS = {
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 0.001,
    "warmup_steps": 5,
    "max_seq_length": 128,
    "r": 16,
    "lora_alpha": 16,
    "packing": False,  # the plain trl baseline does not pack (trl's default); ours would by default
}


def sft_bench_inputs(max_steps: int):
    """(model directory, conversations file, settings) for an SFT benchmark of ``max_steps`` steps."""
    from compute.sample_datasets import conversations_rows, write_jsonl
    from compute.tiny_model import build_tiny_model

    model_dir = build_tiny_model(HOME / "models" / "bench-llama", hidden_size=256, num_layers=4)
    data = write_jsonl(HOME / "data" / "conversations.jsonl", conversations_rows(512))
    return model_dir, data, {**SFT_SETTINGS, "max_steps": max_steps}


def sft_flow_params(model_dir, file_id: str, settings: dict) -> dict:
    """The same training as the plain trl script: no merged copy, plain AdamW."""
    return {"model": str(model_dir), "training_file": file_id, "merge_before_push": False, "optim": "adamw", **settings}


def job_record(run) -> dict:
    from blocks.storage import load_artifact_store
    from client.runs import job_id_of
    from store.layout import result_key

    job_id = job_id_of(run)
    return load_artifact_store().read_json(result_key(job_id))


def alternate_sft_rounds(model_dir, data, settings: dict, rounds: int) -> list[tuple[dict, float, dict]]:
    """The plain trl script, then ``finetune/sft``, ``rounds`` times; each round is a new job (seed
    3407 + round, for both). Returns (baseline report, our wall seconds, our metrics) per round.

    Alternating puts both under the same background load, which on a small machine varies by
    ±20 % between runs. Needs the stack up (:func:`embedded_stack`).
    """
    from blocks.storage import load_artifact_store
    from store.files import upload_file

    file_id = upload_file(load_artifact_store(), data, "conversations").id
    results = []
    for round_number in range(rounds):
        round_settings = {**settings, "seed": 3407 + round_number}
        baseline = run_plain_trl(model_dir, data, round_settings, HOME / f"plain-trl-{round_number}")
        log(f"plain trl: {baseline['wall_seconds']:.1f} s wall, {baseline['tokens']} tokens in {baseline['train_runtime']:.1f} s")
        run, wall = submit_and_wait("finetune/sft", sft_flow_params(model_dir, file_id, round_settings))
        assert run.state.is_completed(), run.state.message
        metrics = job_record(run)["metrics"]
        log(f"ours: {wall:.1f} s wall, {metrics['num_input_tokens_seen']} tokens in {metrics['train_runtime']:.1f} s")
        results.append((baseline, wall, metrics))
    return results
