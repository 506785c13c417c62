"""Training throughput: tokens/s of our SFT flow vs a plain trl script, same model, data, settings.

Tokens are the non-padding input tokens the Trainer counted; time is the Trainer's own
train_runtime in both (so start-up is excluded: orchestration_overhead.py measures that).
Ours runs through `finetune/sft` (control flow → GPU stage on the worker).
Target: ratio ≥ 0.95.

    python bench/train_throughput.py [MAX_STEPS]
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
    from blocks.storage import load_artifact_store
    from compute.sample_datasets import conversations_rows, write_jsonl
    from compute.tiny_model import build_tiny_model
    from store.files import upload_file

    settings = {**SETTINGS, "max_steps": max_steps}
    model_dir = build_tiny_model(HOME / "models" / "bench-llama", hidden_size=256, num_layers=4)
    data = write_jsonl(HOME / "data" / "conversations.jsonl", conversations_rows(512))
    baseline = run_plain_trl(model_dir, data, settings, HOME / "plain-trl")
    log(f"plain trl: {baseline['tokens']} tokens in {baseline['train_runtime']:.1f} s")
    with embedded_stack():
        file_id = upload_file(load_artifact_store(), data, "conversations").id
        params = {"model": str(model_dir), "training_file": file_id, "merge_before_push": False, "optim": "adamw", **settings}
        run, _ = submit_and_wait("finetune/sft", params)
        assert run.state.is_completed(), run.state.message
        job_id = next(tag.split(":", 1)[1] for tag in run.tags if tag.startswith("ow-job:"))
        metrics = load_artifact_store().read_json(f"jobs/{job_id}/result.json")["metrics"]
    ours = metrics["num_input_tokens_seen"] / metrics["train_runtime"]
    log(f"ours: {metrics['num_input_tokens_seen']} tokens in {metrics['train_runtime']:.1f} s")
    print(
        json.dumps(
            {
                "metric": "sft_train_tokens_per_second",
                "value": round(ours, 1),
                "unit": "tokens/s",
                "baseline": round(baseline["tokens_per_second"], 1),
                "ratio": round(ours / baseline["tokens_per_second"], 3),
                "max_steps": max_steps,
                "target_ratio": 0.95,
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 150)
