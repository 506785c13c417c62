"""The batch-inference job's GPU-stage function: inputs from the store, generation, outputs back.

Rows are journaled to the store as they are generated (:mod:`compute.row_journal`, stream
``outputs``), so an attempt started after a lost pod generates only the rows still missing.
"""

from __future__ import annotations

import json

from compute.generation.batch import run_inference
from compute.row_journal import journal_root, open_stage_journal
from compute.stage import StageContext, StageResult
from jobs.inference import InferenceConfig
from store.files import upload_file

PREVIEW_ROWS = 20


def run_inference_stage(config: InferenceConfig, context: StageContext) -> StageResult:
    output_path = context.work_dir / "outputs.jsonl"
    input_path = context.local_file(config.input_file)
    result = run_inference(
        config,
        context.local_model(config.model),
        input_path,
        output_path,
        progress=lambda done, total: context.reporter.progress(done, total, "rows"),
        journal=open_stage_journal(context, "outputs", config, files=[input_path]),
    )
    uri = context.store.put_file(output_path, f"{context.job_prefix}/outputs.jsonl")
    # Also a content-addressed file, as OpenWeights returns it: ow.files.content(job.outputs["file"]).
    file_id = upload_file(context.store, output_path, "result", filename=f"{context.job_id}.jsonl").id
    context.reporter.table("preview", _preview(output_path), description=f"First {PREVIEW_ROWS} rows of {uri}")
    return StageResult(
        outputs={"outputs": uri, "file": file_id},
        metrics={
            "rows": result.rows,
            "completions": result.completions,
            "prompt_tokens": result.prompt_tokens,
            "generated_tokens": result.generated_tokens,
            "generation_seconds": round(result.seconds, 3),
            "tokens_per_second": round(result.tokens_per_second, 2),
            "resumed_rows": result.resumed_rows,
        },
        details={"backend": result.backend, "resumed_rows": result.resumed_rows},
        disposable_prefixes=[journal_root(context.job_prefix)],
    )


def _preview(path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if len(rows) >= PREVIEW_ROWS:
                break
            row = json.loads(line)
            prompt = row.get("text") or (row.get("messages") or [{}])[-1].get("content", "")
            completion = row["completion"]
            rows.append(
                {
                    "prompt": prompt if isinstance(prompt, str) else json.dumps(prompt),
                    "completion": completion if isinstance(completion, str) else " | ".join(completion),
                }
            )
    return rows
