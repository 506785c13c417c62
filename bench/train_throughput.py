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

from harness import alternate_sft_rounds, embedded_stack, median, sft_bench_inputs


def main(max_steps: int, rounds: int) -> None:
    model_dir, data, settings = sft_bench_inputs(max_steps)
    with embedded_stack():
        results = alternate_sft_rounds(model_dir, data, settings, rounds)
    baseline_rate = median([baseline["tokens_per_second"] for baseline, _, _ in results])
    ours = median([metrics["num_input_tokens_seen"] / metrics["train_runtime"] for _, _, metrics in results])
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
