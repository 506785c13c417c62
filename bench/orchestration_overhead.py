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

from harness import (
    HOME,
    embedded_stack,
    job_record,
    log,
    run_plain_trl,
    sft_bench_inputs,
    sft_flow_params,
    submit_and_wait,
)


def main(max_steps: int) -> None:
    from blocks.storage import load_artifact_store
    from store.files import upload_file

    model_dir, data, settings = sft_bench_inputs(max_steps)
    with embedded_stack():
        # The baseline runs with the stack up too, so both share the machine with the same idle server and workers.
        log("baseline: plain trl script …")
        baseline = run_plain_trl(model_dir, data, settings, HOME / "plain-trl")
        log(f"baseline: {baseline['wall_seconds']:.1f} s wall, {baseline['train_runtime']:.1f} s training")
        file_id = upload_file(load_artifact_store(), data, "conversations").id
        log("ours: finetune/sft through the deployment and workers …")
        run, ours = submit_and_wait("finetune/sft", sft_flow_params(model_dir, file_id, settings))
        assert run.state.is_completed(), run.state.message
        training = job_record(run)["metrics"]["train_runtime"]
    log(f"ours: {ours:.1f} s wall, {training:.1f} s training")
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
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)  # ≈ 75 s of training here: over the 60 s the target asks
