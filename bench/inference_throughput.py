"""Inference throughput: generated tokens/s of `inference/batch` vs a plain transformers script.

Same model, prompts, batch size (8, the CPU backend's default) and sampling (temperature 1,
exactly MAX_TOKENS new tokens per prompt); both time generation only, not model loading.
Ours runs through the deployment (control flow → GPU stage on the worker) and reports its own
generation time. Target: ratio ≥ 0.9 on CPU. ROUNDS (default 5) alternate the two, each a new
job, and the medians are compared: single runs on a 2-core machine vary by ±10 %.

    python bench/inference_throughput.py [PROMPTS] [MAX_TOKENS] [ROUNDS]
"""

import json
import subprocess
import sys

from harness import HOME, ROOT, embedded_stack, log, median, submit_and_wait


def main(prompts: int = 256, max_tokens: int = 48, rounds: int = 5) -> None:
    from blocks.storage import load_artifact_store
    from client.runs import job_id_of
    from compute.sample_datasets import conversations_rows, write_jsonl
    from compute.tiny_model import build_tiny_model
    from store.files import upload_file
    from store.layout import result_key

    model_dir = build_tiny_model(HOME / "models" / "bench-llama", hidden_size=256, num_layers=4)
    rows = [{"messages": row["messages"][:-1]} for row in conversations_rows(prompts)]  # prompts only
    data = write_jsonl(HOME / "data" / "prompts.jsonl", rows)
    baseline_command = [sys.executable, str(ROOT / "bench" / "plain_generate.py"), str(model_dir), str(data)]
    baseline_command.append(json.dumps({"batch_size": 8, "max_tokens": max_tokens}))
    ours_rates, baseline_rates = [], []
    with embedded_stack():
        file_id = upload_file(load_artifact_store(), data, "conversations").id
        # Alternate the two, with the stack up for both, so they share the machine's background load.
        for round_number in range(rounds):
            baseline = json.loads(subprocess.run(baseline_command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            baseline_rates.append(baseline["tokens_per_second"])
            log(f"plain transformers: {baseline['generated_tokens']} tokens in {baseline['seconds']:.1f} s")
            params = {
                "model": str(model_dir),
                "input_file": file_id,
                "max_tokens": max_tokens,
                "min_tokens": max_tokens,
                "temperature": 1.0,
                "seed": round_number,  # a new job each round (an identical one would be a cache hit)
            }
            run, _ = submit_and_wait("inference/batch", params)
            assert run.state.is_completed(), run.state.message
            job_id = job_id_of(run)
            metrics = load_artifact_store().read_json(result_key(job_id))["metrics"]
            ours_rates.append(metrics["generated_tokens"] / metrics["generation_seconds"])
            log(f"inference/batch: {metrics['generated_tokens']} tokens in {metrics['generation_seconds']:.1f} s")
    ours, baseline_rate = median(ours_rates), median(baseline_rates)
    print(
        json.dumps(
            {
                "metric": "inference_generated_tokens_per_second",
                "value": round(ours, 1),
                "unit": "tokens/s",
                "baseline": round(baseline_rate, 1),
                "ratio": round(ours / baseline_rate, 3),
                "rounds": rounds,
                "prompts": prompts,
                "max_tokens": max_tokens,
                "target_ratio": 0.9,
            }
        )
    )


if __name__ == "__main__":
    main(*(int(value) for value in sys.argv[1:4]))
