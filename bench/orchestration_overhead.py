"""Orchestration overhead: wall time of an SFT job through Prefect vs the same training as a plain
trl script in one process (same model, data, steps, settings).

Ours: submit `finetune/sft` → control flow (validate, hash, cache miss) → GPU stage on the
worker (load, train, save and upload the adapter) → Completed. Baseline: `bench/plain_trl_sft.py`
from process start to exit. Both pay Python start-up and the torch/transformers imports.
Target: ratio ≤ 1.15 for a job that trains ≥ 60 s.

    python bench/orchestration_overhead.py [MAX_STEPS]
"""

import json
import sys

from harness import HOME, embedded_stack, log, run_plain_trl, submit_and_wait

SETTINGS = {
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 0.001,
    "warmup_steps": 5,
    "max_seq_length": 128,
    "r": 16,
    "lora_alpha": 16,
}


def main(max_steps: int) -> None:
    from blocks.storage import load_artifact_store, ow_home
    from compute.sample_datasets import conversations_rows, write_jsonl
    from compute.tiny_model import build_tiny_model
    from store.files import upload_file

    settings = {**SETTINGS, "max_steps": max_steps}
    # Larger than the test model, so that training (not start-up) dominates, as in real jobs.
    model_dir = build_tiny_model(HOME / "models" / "bench-llama", hidden_size=256, num_layers=4)
    data = write_jsonl(HOME / "data" / "conversations.jsonl", conversations_rows(512))

    log("baseline: plain trl script …")
    baseline = run_plain_trl(model_dir, data, settings, HOME / "plain-trl")
    log(f"baseline: {baseline['wall_seconds']:.1f} s wall, {baseline['train_runtime']:.1f} s training")

    with embedded_stack():
        file_id = upload_file(load_artifact_store(), data, "conversations").id
        params = {"model": str(model_dir), "training_file": file_id, "merge_before_push": False, "optim": "adamw", **settings}
        log("ours: finetune/sft through the deployment and workers …")
        run, ours = submit_and_wait("finetune/sft", params)
        assert run.state.is_completed(), run.state.message
        job_id = next(tag.split(":", 1)[1] for tag in run.tags if tag.startswith("ow-job:"))
        record = load_artifact_store().read_json(f"jobs/{job_id}/result.json")
    training = record["metrics"]["train_runtime"]
    log(f"ours: {ours:.1f} s wall, {training:.1f} s training (store: {ow_home()})")
    print(
        json.dumps(
            {
                "metric": "sft_flow_wall_time_ratio",
                "value": round(ours / baseline["wall_seconds"], 3),
                "unit": "ratio",
                "ours_seconds": round(ours, 1),
                "baseline": round(baseline["wall_seconds"], 1),
                "ratio": round(ours / baseline["wall_seconds"], 3),
                "training_seconds_ours": round(training, 1),
                "training_seconds_baseline": round(baseline["train_runtime"], 1),
                "max_steps": max_steps,
                "target": 1.15,
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
