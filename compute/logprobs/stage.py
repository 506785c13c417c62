"""The ``inference/logprobs`` job's GPU-stage function: inputs from the store, scoring, outputs back.

Rows are journaled to the store as they are scored (:mod:`compute.row_journal`, stream
``logprobs``), so an attempt started after a lost pod scores only the rows still missing.
"""

from __future__ import annotations

import json

from compute.logprobs.runner import run_logprobs
from compute.row_journal import journal_root, open_stage_journal
from compute.stage import StageContext, StageResult
from jobs.logprobs import LogprobsConfig
from store.files import upload_file

PREVIEW_ROWS = 20


def run_logprobs_stage(config: LogprobsConfig, context: StageContext) -> StageResult:
    output_path = context.work_dir / "logprobs.jsonl"
    input_path = context.local_file(config.input_file)
    result = run_logprobs(
        config,
        context.local_model(config.model),
        input_path,
        output_path,
        progress=lambda done, total: context.reporter.progress(done, total, "rows"),
        journal=open_stage_journal(context, "logprobs", config, files=[input_path]),
    )
    uri = context.store.put_file(output_path, f"{context.job_prefix}/logprobs.jsonl")
    # Also a content-addressed file, as batch inference returns it: ow.files.content(job.outputs["file"]).
    file_id = upload_file(context.store, output_path, "result", filename=f"{context.job_id}.jsonl").id
    context.reporter.table("preview", _preview(output_path), description=f"First {PREVIEW_ROWS} rows of {uri}")
    mean = result.total_logprob / result.scored_tokens if result.scored_tokens else 0.0
    return StageResult(
        outputs={"logprobs": uri, "file": file_id},
        metrics={
            "rows": result.rows,
            "assistant_messages": result.assistant_messages,
            "scored_tokens": result.scored_tokens,
            "mean_token_logprob": round(mean, 6),
            "scoring_seconds": round(result.seconds, 3),
            "resumed_rows": result.resumed_rows,
        },
        details={"backend": result.backend, "resumed_rows": result.resumed_rows},
        disposable_prefixes=[journal_root(context.job_prefix)],
    )


def _preview(path) -> list[dict]:
    """One row per assistant message of the first rows: its text, tokens and log-probability."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if number > PREVIEW_ROWS:
                break
            row = json.loads(line)
            for turn in row["logprobs"]:
                content = row["messages"][turn["message"]]["content"]
                rows.append(
                    {
                        "row": number,
                        "message": turn["message"],
                        "content": content if isinstance(content, str) else "".join(part["text"] for part in content),
                        "tokens": len(turn["tokens"]),
                        "logprob": round(turn["logprob"], 4),
                    }
                )
    return rows
