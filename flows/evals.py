"""Evaluations: deployments ``eval/inspect``, ``eval/mmlu-pro``, ``eval/multiple-choice`` and ``eval/sweep``.

``eval/inspect``, ``eval/mmlu-pro`` and ``eval/multiple-choice`` are jobs like any other (content-hashed, cached, GPU
stage only on a miss). ``eval/sweep`` evaluates a list of models on a list of evaluations:
it groups models by base model (one server, or one loaded model, serves a base and all its
adapters), runs each evaluation that is not already stored as its own flow run, and publishes
one comparison table (models × evaluations) under a stable artifact key, so each run of the
sweep is a new version of the same table, and the same scores as a bar chart (key ``…-chart``).

The nightly sweep's models and evaluations can live in a Prefect Variable
(``ow-eval-sweep-<sweep_name>``: ``{"models": [...], "evals": [...]}``), editable in the UI, so
the scheduled deployment's parameters never change.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.deployments import run_deployment
from prefect.states import Cancelled, State
from prefect.variables import Variable

from flows.job_flow import job_flow
from jobs.sweeps import SweepConfig, SweepEval, evaluation_jobs
from store.layout import result_key
from tasks.run_waits import ControlRunCancelled, stop_if_cancelled_before_running, wait_until_final

eval_inspect = job_flow("eval-inspect", "eval", module=__name__)
eval_mmlu_pro = job_flow("eval-mmlu-pro", "eval", module=__name__)
eval_multiple_choice = job_flow("eval-multiple-choice", "eval", module=__name__)


@flow(name="eval", log_prints=True)
def eval_sweep(
    sweep_name: str = "nightly",
    models: list[str] | None = None,
    evals: list[SweepEval] | None = None,
) -> dict[str, Any] | State:
    """Evaluate every model on every evaluation; unchanged (model, evaluation) pairs are not re-run.

    Args:
        sweep_name: names the comparison table (artifact key ``eval-sweep-<name>``) and the Prefect
            Variable ``ow-eval-sweep-<name>`` that holds models and evals when they are not given.
        models: model references (base models and fine-tuned adapters, mixed).
        evals: the evaluations, each with a column name, a kind (inspect, mmlu-pro, multiple-choice) and its parameters.
    """
    from blocks.storage import load_artifact_store

    logger = get_run_logger()
    config = _sweep_config(sweep_name, models, evals)
    if not config.models or not config.evals:
        logger.warning("sweep %r has nothing to evaluate: set models and evals, or the variable %s", sweep_name, config.variable_name)
        return {"table": [], "ran": 0, "reused": 0}
    try:
        stop_if_cancelled_before_running()
    except ControlRunCancelled:
        return Cancelled(message=f"sweep {sweep_name} cancelled before it started; no evaluation was submitted")
    store = load_artifact_store()
    planned = evaluation_jobs(config, store)
    submitted = {}
    for job in planned:
        if store.exists(result_key(job.job_id)):
            logger.info("%s on %s: stored result %s reused", job.eval.name, ", ".join(job.models), job.job_id)
        else:
            submitted[job.job_id] = run_deployment(
                job.deployment,
                parameters=job.parameters,
                tags=[f"ow-sweep:{sweep_name}"],
                timeout=0,  # submitted now, waited for below
                as_subflow=False,  # each evaluation is a job of its own, as if submitted by hand
            )
            logger.info("%s on %s: running as flow run %s", job.eval.name, ", ".join(job.models), submitted[job.job_id].name)
    failures = []
    for flow_run in submitted.values():
        try:
            final = wait_until_final(flow_run.id)
        except ControlRunCancelled:
            # The evaluations go on: each is a job of its own, as if submitted by hand.
            return Cancelled(message=f"sweep {sweep_name} cancelled; its {len(submitted)} evaluation job(s) go on")
        if not final.state.is_completed():
            failures.append(f"{final.name}: {final.state_name} ({final.state.message})")
    table = comparison_table(config, planned, store)
    table_key = f"eval-sweep-{sweep_name}".lower().replace("_", "-")
    description = f"Sweep {sweep_name}: {len(config.models)} models × {len(config.evals)} evaluations"
    create_table_artifact(table=table, key=table_key, description=description)
    try:
        chart = comparison_chart_markdown(config, table)
    except Exception as exc:  # noqa: BLE001 - the chart repeats the table; it is not worth failing the sweep for
        logger.warning("could not draw the comparison chart: %s", exc)
        chart = None
    if chart:
        create_markdown_artifact(markdown=chart, key=f"{table_key}-chart", description=description)
    if failures:
        raise RuntimeError(f"{len(failures)} evaluation(s) failed: " + "; ".join(failures))
    return {"table": table, "ran": len(submitted), "reused": len(planned) - len(submitted)}


def comparison_table(config: SweepConfig, planned, store) -> list[dict[str, Any]]:
    """One row per model, one column per evaluation (the model's primary score there)."""
    scores: dict[tuple[str, str], float | None] = {}
    for job in planned:
        key = result_key(job.job_id)
        record_scores = store.read_json(key)["metrics"].get("scores", {}) if store.exists(key) else {}
        for model, served_name in job.served_names.items():
            scores[(model, job.eval.name)] = record_scores.get(served_name)
    return [{"model": model, **{e.name: scores.get((model, e.name)) for e in config.evals}} for model in config.models]


def comparison_chart_markdown(config: SweepConfig, table: list[dict[str, Any]]) -> str | None:
    """The comparison table as a chart (score per model per evaluation) in markdown; None without scores."""
    from tasks.charts import image_markdown, scores_chart_png

    png = scores_chart_png(table, [e.name for e in config.evals])
    if png is None:
        return None
    caption = f"Sweep `{config.sweep_name}`: each model's score on each evaluation (the table artifact has the numbers)."
    return image_markdown(f"scores of sweep {config.sweep_name}", png, caption=caption)


def _sweep_config(sweep_name: str, models: list[str] | None, evals: list[SweepEval] | None) -> SweepConfig:
    variable_name = SweepConfig.variable_for(sweep_name)
    stored = Variable.get(variable_name, default=None) or {}
    return SweepConfig(
        sweep_name=sweep_name,
        models=models if models is not None else stored.get("models", []),
        evals=evals if evals is not None else stored.get("evals", []),
    )
