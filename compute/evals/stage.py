"""GPU-stage functions of the evaluation jobs.

- ``eval/inspect``: serve the model (and its adapters) through the same OpenAI-compatible server
  as ``api/serve``, on loopback inside the stage, and run inspect-ai against it; the logs go to
  the store (``jobs/<job_id>/inspect-logs/``, readable by ``inspect view``), the scores to a table.
- ``eval/mmlu-pro``: generate with the batch-generation backend directly (no HTTP in between),
  score, and store every question's raw answer, extracted letter and correctness per model. The
  scored questions are journaled to the store as they come (:mod:`compute.row_journal`, stream
  ``mmlu-pro/model-<n>``), so an attempt started after a lost pod asks only the questions left.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from compute.backend import select_backend
from compute.row_journal import journal_root, open_stage_journal
from compute.stage import StageContext, StageResult
from jobs.evals import InspectEvalConfig, MmluProConfig
from jobs.serve import ServeConfig


def run_inspect_stage(config: InspectEvalConfig, context: StageContext) -> StageResult:
    from compute.evals.inspect_runner import OpenAIEndpoint, run_inspect_eval
    from compute.evals.inspect_tasks import resolve_inspect_task
    from compute.serving.stage import make_server

    ref = config.task_ref
    task_file = context.local_file(ref.file) if ref.file else None
    task = resolve_inspect_task(ref, task_args=config.task_args, local_file=_as_python_file(task_file))
    serve_config = ServeConfig(
        model=config.model,
        lora_adapters=config.lora_adapters,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_connections,
    )
    base = context.local_model(config.model)
    adapters = {reference: context.local_adapter(reference) for reference in config.lora_adapters}
    token = secrets.token_urlsafe(32)
    backend = select_backend("generation")
    server = make_server(backend.name, serve_config, base.base_path, adapters, token, "127.0.0.1", 0, context.work_dir)
    log_dir = context.work_dir / "inspect-logs"
    with_server = server.start()
    try:
        result = run_inspect_eval(
            config,
            task,
            endpoint=OpenAIEndpoint(with_server.base_url, token),
            model_names=config.models_to_evaluate(),
            log_dir=log_dir,
        )
    finally:
        server.stop()
    logs_uri = context.store.upload_tree(log_dir, f"{context.job_prefix}/inspect-logs")
    table = result.scores_table()
    context.reporter.table("scores", table, description=f"inspect-ai scores of {config.eval_name}")
    result.raise_for_failures()  # after the logs are stored, so failures can be inspected
    return StageResult(
        outputs={"logs": logs_uri},
        metrics={"scores": primary_scores(table)},
        details={"scores": table, "log_files": [path.name for path in result.log_paths], "backend": backend.name},
    )


def primary_scores(table: list[dict]) -> dict[str, float]:
    """One number per model: its first task's first scorer's accuracy (or first metric)."""
    scores: dict[str, float] = {}
    for model in dict.fromkeys(row["model"] for row in table):
        rows = [row for row in table if row["model"] == model]
        preferred = next((row for row in rows if row["metric"] == "accuracy"), rows[0])
        scores[_served_name(model)] = float(preferred["value"])
    return scores


def _served_name(inspect_model: str) -> str:
    """inspect records ``openai-api/<service>/<name>``; the name is what we served the model as."""
    parts = inspect_model.split("/", 2)
    return parts[2] if len(parts) == 3 and parts[0] == "openai-api" else inspect_model


def _as_python_file(path: Path | None) -> Path | None:
    """inspect loads task files by their .py suffix; uploads are stored by content hash."""
    if path is None:
        return None
    copy = path.with_name(f"{path.name}.py")
    if not copy.exists():
        copy.write_bytes(path.read_bytes())
    return copy


def run_mmlu_pro_stage(config: MmluProConfig, context: StageContext) -> StageResult:
    from compute.evals.mmlu_pro import run_mmlu_pro
    from compute.evals.mmlu_pro.scoring import summary_table
    from compute.generation.backends import load_generator, tokenizer_source

    base = context.local_model(config.model)
    adapters = {reference: context.local_adapter(reference) for reference in config.lora_adapters}
    backend = select_backend("generation")
    generator = load_generator(
        backend,
        base.base_path,
        adapters=adapters,
        merge_adapter_paths=base.merge_adapter_paths,
        tokenizer_path=tokenizer_source(base.base_path, None),
        max_model_len=config.max_model_len,
    )
    dataset = context.local_file(config.dataset_file)
    fewshot = context.local_file(config.fewshot_file) if config.fewshot_file else None
    models = config.models_to_evaluate()
    outputs: dict[str, str] = {}
    accuracy: dict[str, float] = {}
    table: list[dict] = []
    index = []
    resumed: dict[str, int] = {}  # questions taken from an earlier attempt, per model
    inputs = [path for path in (dataset, fewshot) if path]
    for number, model in enumerate(models):
        adapter = model if model in adapters else None
        output_dir = context.work_dir / "mmlu-pro" / f"model-{number}"
        journal = open_stage_journal(context, f"mmlu-pro/model-{number}", config, files=inputs, extra=[model])
        result = run_mmlu_pro(
            config,
            dataset_path=dataset,
            fewshot_path=fewshot,
            generate=_generate_with(generator, adapter),
            output_dir=output_dir,
            on_progress=lambda done, total, model=model: context.reporter.progress(done, total, f"MMLU-Pro, {model}"),
            journal=journal,
        )
        resumed[model] = result.resumed
        prefix = f"{context.job_prefix}/mmlu-pro/model-{number}"
        outputs[f"results-model-{number}"] = context.store.put_file(result.results_path, f"{prefix}/results.jsonl")
        context.store.put_file(result.summary_path, f"{prefix}/summary.json")
        accuracy[model] = result.summary.overall.accuracy
        table += [{"model": model, **row} for row in summary_table(result.summary)]
        index.append({"model": model, "results": f"{prefix}/results.jsonl", "summary": f"{prefix}/summary.json"})
    context.store.write_bytes(f"{context.job_prefix}/mmlu-pro/models.json", json.dumps(index, indent=2).encode())
    context.reporter.table("accuracy", table, description="MMLU-Pro accuracy per category and overall")
    return StageResult(
        outputs=outputs,
        metrics={"scores": accuracy, "resumed_rows": sum(resumed.values())},
        details={"table": table, "backend": backend.name, "resumed_rows": resumed},
        disposable_prefixes=[journal_root(context.job_prefix)],
    )


def _generate_with(generator, adapter: str | None):
    """The MMLU-Pro runner's ``generate(prompts, sampling)`` over the batch-generation backend."""
    from compute.generation.prompts import encode_chat, encode_text
    from compute.generation.sampling import SamplingSettings

    def generate(prompts, sampling) -> list[str]:
        tokenizer = generator.tokenizer
        encoded = [
            encode_text(tokenizer, prompt) if isinstance(prompt, str) else encode_chat(tokenizer, prompt, continue_final_message=False)
            for prompt in prompts
        ]
        settings = SamplingSettings(max_tokens=sampling.max_tokens, temperature=sampling.temperature, stop=tuple(sampling.stop))
        return [completions[0].text for completions in generator.generate(encoded, settings, adapter=adapter)]

    return generate
