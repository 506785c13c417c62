"""`make demo`: a real fine-tuning job through Prefect on the embedded default, then a free resubmission.

1. start (or reuse) the local Prefect server, the two process workers, the artifact store and
   the deployments from prefect.yaml;
2. build a tiny Llama-style model and a sample conversations dataset locally (no download);
3. upload the dataset with `ow files upload`;
4. `prefect deployment run finetune/sft --watch`: validate → hash → GPU stage (trl + peft);
5. print where the adapter is and the final training loss;
6. submit the identical job again: it completes from cache in seconds, without training.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OW_HOME = Path(os.environ.get("OW_HOME") or ROOT / ".ow")
BIN = Path(sys.executable).parent

TRAINING = {
    "epochs": "4",
    "learning_rate": "0.003",
    "per_device_train_batch_size": "8",
    "gradient_accumulation_steps": "1",
    "warmup_steps": "2",
    "r": "8",
    "lora_alpha": "16",
    "max_seq_length": "256",
}


def step(title: str) -> None:
    print(f"\n\033[1m==> {title}\033[0m", flush=True)


def run_deployment_cli(model_dir: Path, file_id: str, run_name: str) -> float:
    command = [str(BIN / "prefect"), "deployment", "run", "finetune/sft", "--watch", "--watch-interval", "1"]
    command += ["--flow-run-name", run_name, "--param", f"model={model_dir}", "--param", f"training_file={file_id}"]
    for key, value in TRAINING.items():
        command += ["--param", f"{key}={value}"]
    print("$", " ".join(command[:4]), "--param model=… --param training_file=…", "--watch", flush=True)
    started = time.monotonic()
    completed = subprocess.run(command)
    elapsed = time.monotonic() - started
    if completed.returncode != 0:
        sys.exit(f"the flow run {run_name} did not complete (exit code {completed.returncode}); see the Prefect UI")
    return elapsed


def flow_run_by_name(name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
        return runs[0], client


def job_id_of(run) -> str:
    from client.runs import job_id_of as tagged_job_id

    return tagged_job_id(run)


def gpu_stage_runs(job_id: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[job_id]))))


def cached_task_state(run_id) -> str:
    from client.runs import task_runs

    tasks = task_runs(run_id, name_like="launch-gpu-stage")
    state = tasks[0].state if tasks else None
    return state.name if state is not None else "missing"


def main() -> int:
    os.environ.setdefault("OW_HOME", str(OW_HOME))
    ui_url = os.environ["PREFECT_API_URL"].removesuffix("/api")

    step("Starting the embedded default (Prefect server, workers, artifact store, deployments)")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "services.py"), "start"], check=True)

    step("Building a tiny local model and a sample dataset (no download)")
    from compute.sample_datasets import conversations_rows, write_jsonl
    from compute.tiny_model import build_tiny_model

    model_dir = build_tiny_model(OW_HOME / "models" / "tiny-llama")
    dataset = write_jsonl(OW_HOME / "data" / "arithmetic-conversations.jsonl", conversations_rows(64))
    print(f"model:   {model_dir}\ndataset: {dataset} (64 conversations)")

    step("Uploading the dataset: ow files upload")
    upload = subprocess.run(
        [str(BIN / "ow"), "files", "upload", str(dataset), "--purpose", "conversations"],
        capture_output=True,
        text=True,
    )
    print(upload.stdout, end="")
    if upload.returncode != 0:
        sys.exit(upload.stderr)
    file_id = upload.stdout.strip().splitlines()[-1]

    step("Fine-tuning: prefect deployment run finetune/sft --watch")
    first_name = f"demo-{uuid.uuid4().hex[:8]}"
    first_seconds = run_deployment_cli(model_dir, file_id, first_name)
    first_run, _ = flow_run_by_name(first_name)
    job_id = job_id_of(first_run)

    from blocks.storage import load_artifact_store
    from store.layout import result_key

    record = load_artifact_store().read_json(result_key(job_id))
    history = [entry for entry in record["details"].get("metrics_history", []) if "loss" in entry]

    step("Result")
    print(f"job ID:            {job_id}")
    print(f"adapter:           {record['outputs']['adapter']}")
    if "merged" in record["outputs"]:
        print(f"merged weights:    {record['outputs']['merged']}")
    if history:
        print(f"training loss:     {history[0]['loss']:.4f} (first step) → {history[-1]['loss']:.4f} (final step)")
    print(f"final loss:        {record['metrics']['final_loss']:.4f} after {record['metrics']['global_step']} steps")
    print(f"took:              {first_seconds:.1f} s end to end")

    step("Submitting the identical job again (expect a cache hit, no training)")
    stages_before = gpu_stage_runs(job_id)
    second_name = f"demo-{uuid.uuid4().hex[:8]}"
    second_seconds = run_deployment_cli(model_dir, file_id, second_name)
    second_run, _ = flow_run_by_name(second_name)
    state = cached_task_state(second_run.id)
    stages_after = gpu_stage_runs(job_id)
    print(f"job ID:            {job_id_of(second_run)} (same job)")
    print(f"gpu-stage task:    {state}")
    print(f"GPU stage runs:    {stages_before} before, {stages_after} after (no new training)")
    print(f"completed in:      {second_seconds:.1f} s (submission to Completed, CLI start-up included)")
    if state != "Cached" or stages_after != stages_before:
        sys.exit("expected the resubmission to be served from cache")

    step("Done")
    print(f"Prefect UI:        {ui_url}")
    print("Stop the server and workers with: make stop")
    return 0


if __name__ == "__main__":
    if shutil.which("prefect", path=str(BIN)) is None:
        sys.exit("run through `make demo` (the project's virtual environment is not active)")
    sys.exit(main())
