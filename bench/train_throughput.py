"""Training throughput: tokens/s of our SFT flow vs a plain trl script, same model, data, settings.

Tokens are the non-padding input tokens the Trainer counted; time is the Trainer's own
train_runtime in both (so start-up is excluded: orchestration_overhead.py measures that).
Ours runs through `finetune/sft` (control flow → GPU stage on the worker). The two alternate for
ROUNDS rounds (a new job each round: another seed) and the medians are compared, so that a burst
of background load on a small machine does not decide the result. Target: ratio ≥ 0.95.

    python bench/train_throughput.py [MAX_STEPS] [ROUNDS]
"""

import json
import sys

from harness import (
    HOME,
    embedded_stack,
    job_record,
    log,
    median,
    run_plain_trl,
    sft_bench_inputs,
    sft_flow_params,
    submit_and_wait,
)


def main(max_steps: int, rounds: int) -> None:
    from blocks.storage import load_artifact_store
    from store.files import upload_file

    model_dir, data, settings = sft_bench_inputs(max_steps)
    ours_rates, baseline_rates = [], []
    with embedded_stack():
        file_id = upload_file(load_artifact_store(), data, "conversations").id
        for round_number in range(rounds):
            round_settings = {**settings, "seed": 3407 + round_number}
            baseline = run_plain_trl(model_dir, data, round_settings, HOME / f"plain-trl-{round_number}")
            baseline_rates.append(baseline["tokens_per_second"])
            log(f"plain trl: {baseline['tokens']} tokens in {baseline['train_runtime']:.1f} s")
            params = sft_flow_params(model_dir, file_id, round_settings)
            run, _ = submit_and_wait("finetune/sft", params)
            assert run.state.is_completed(), run.state.message
            metrics = job_record(run)["metrics"]
            ours_rates.append(metrics["num_input_tokens_seen"] / metrics["train_runtime"])
            log(f"ours: {metrics['num_input_tokens_seen']} tokens in {metrics['train_runtime']:.1f} s")
    ours, baseline_rate = median(ours_rates), median(baseline_rates)
    print(
        json.dumps(
            {
                "metric": "sft_train_tokens_per_second",
                "value": round(ours, 1),
                "unit": "tokens/s",
                "baseline": round(baseline_rate, 1),
                "ratio": round(ours / baseline_rate, 3),
                "rounds": rounds,
                "max_steps": max_steps,
                "target_ratio": 0.95,
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 150, int(sys.argv[2]) if len(sys.argv) > 2 else 5)
