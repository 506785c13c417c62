"""Cache-hit latency: seconds from submitting an identical fine-tuning job to its Completed state.

Through the deployment and the worker, as `prefect deployment run finetune/sft` does: the
control flow is picked up by the process worker, validates, hashes, finds the cached result
and completes, without a GPU stage. Target: median ≤ 10 s on a 2-core machine.

    python bench/cache_hit_latency.py [REPEATS]
"""

import json
import sys

from harness import HOME, embedded_stack, log, median, submit_and_wait


def main(repeats: int = 7) -> None:
    from blocks.storage import load_artifact_store
    from compute.sample_datasets import conversations_rows, write_jsonl
    from compute.tiny_model import build_tiny_model
    from store.files import upload_file

    model_dir = build_tiny_model(HOME / "models" / "tiny-llama")
    data = write_jsonl(HOME / "data" / "conversations.jsonl", conversations_rows(32))
    with embedded_stack():
        file_id = upload_file(load_artifact_store(), data, "conversations").id
        params = {"model": str(model_dir), "training_file": file_id, "max_steps": 2, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}
        first, seconds = submit_and_wait("finetune/sft", params)
        assert first.state.is_completed(), first.state.message
        log(f"first submission (trains): {seconds:.1f} s")
        latencies = []
        for attempt in range(repeats):
            run, seconds = submit_and_wait("finetune/sft", params)
            assert run.state.is_completed(), run.state.message
            latencies.append(seconds)
            log(f"identical resubmission {attempt + 1}: {seconds:.2f} s")
    value = median(latencies)
    print(
        json.dumps(
            {
                "metric": "cache_hit_latency_median",
                "value": round(value, 2),
                "unit": "s",
                "target": 10.0,
                "samples": [round(s, 2) for s in latencies],
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
