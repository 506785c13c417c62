"""Run an inspect-ai task against models behind an OpenAI-compatible endpoint; return logs and scores.

How inspect is pointed at the endpoint: each served model becomes an inspect ``Model`` built with
``get_model("openai-api/<service>/<served name>", base_url=..., api_key=...)``. inspect's
``openai-api`` provider speaks the OpenAI chat-completions API to any base URL and sends the model
name after the service prefix. The key and URL are passed as constructor arguments, never through
the provider's ``<SERVICE>_API_KEY`` / ``<SERVICE>_BASE_URL`` environment variables, so concurrent
runs in one process cannot see each other's endpoints and nothing is read from the environment.
The eval log records the model name, base URL and ``model_args``, but not the key: the key is not a
model argument, it lives only in the HTTP client.

Typical use from a flow::

    task = resolve_inspect_task(config.task_ref, task_args=config.task_args, local_file=path)  # before serving
    ...serve the model(s)...
    result = run_inspect_eval(config, task, endpoint=endpoint, model_names=served_names, log_dir=log_dir)
    upload(result.log_paths); table_artifact(result.scores_table()); result.raise_for_failures()
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from compute.evals.inspect_tasks import InspectTaskError, ResolvedInspectTask, resolve_inspect_task
from jobs.evals import InspectEvalConfig

logger = logging.getLogger(__name__)

__all__ = [
    "InspectEvalFailed",
    "InspectLog",
    "InspectRunResult",
    "InspectScore",
    "InspectTaskError",
    "OpenAIEndpoint",
    "ResolvedInspectTask",
    "resolve_inspect_task",
    "run_inspect_eval",
    "scores_from_logs",
]


@dataclass(frozen=True)
class OpenAIEndpoint:
    """An OpenAI-compatible server: its base URL (ending in ``/v1``) and the key it expects."""

    base_url: str
    api_key: SecretStr | str
    # Provider service name in inspect's model string ``openai-api/<service>/<model>``; shows in logs.
    service: str = "ow"

    def __post_init__(self) -> None:
        if isinstance(self.api_key, str):  # accept a plain string, keep it masked in reprs from here on
            object.__setattr__(self, "api_key", SecretStr(self.api_key))
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint base_url must be an http(s) URL, got {self.base_url!r}")
        if not self.service or "/" in self.service:
            raise ValueError(f"endpoint service must be a non-empty name without '/', got {self.service!r}")

    def inspect_model(self, model_name: str) -> str:
        """inspect's model string for a model this endpoint serves."""
        return f"openai-api/{self.service}/{model_name}"


@dataclass(frozen=True)
class InspectScore:
    """One metric of one scorer for one (task, model) run."""

    task: str
    model: str
    scorer: str
    metric: str
    value: float


@dataclass(frozen=True)
class InspectLog:
    """One eval log written by the run: one per (task, model)."""

    path: Path
    task: str
    model: str
    status: str  # "success", "error", "cancelled" or "started"
    error: str | None = None


class InspectEvalFailed(RuntimeError):
    """At least one (task, model) run did not succeed; its log is still written."""


@dataclass(frozen=True)
class InspectRunResult:
    """The logs inspect wrote and the scores read from them."""

    logs: list[InspectLog]
    scores: list[InspectScore]

    @property
    def log_paths(self) -> list[Path]:
        """Paths of the eval logs (each opens with ``inspect view`` / ``read_eval_log``)."""
        return [log.path for log in self.logs]

    @property
    def failed(self) -> list[InspectLog]:
        """Runs that did not finish successfully."""
        return [log for log in self.logs if log.status != "success"]

    def scores_table(self) -> list[dict[str, str | float]]:
        """Rows for a table artifact: task, model, scorer, metric, value."""
        return [
            {"task": s.task, "model": s.model, "scorer": s.scorer, "metric": s.metric, "value": s.value}
            for s in self.scores
        ]

    def raise_for_failures(self) -> None:
        """Raise ``InspectEvalFailed`` naming each run that did not succeed."""
        if self.failed:
            details = "; ".join(
                f"{log.task} on {log.model}: {log.status} ({log.error or 'no error message'})"
                for log in self.failed
            )
            raise InspectEvalFailed(f"{len(self.failed)} inspect run(s) did not succeed: {details}")


def scores_from_logs(logs: Iterable) -> list[InspectScore]:
    """Flatten the ``results.scores`` of ``EvalLog`` objects into (task, model, scorer, metric, value) rows."""
    rows: list[InspectScore] = []
    for log in logs:
        if log.results is None:
            continue
        for score in log.results.scores:
            for metric in score.metrics.values():
                rows.append(
                    InspectScore(log.eval.task, log.eval.model, score.name, metric.name, float(metric.value))
                )
    return rows


def _generate_config(config: InspectEvalConfig) -> dict:
    settings = {
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "seed": config.seed,
        "max_connections": config.max_connections,
    }
    return {key: value for key, value in settings.items() if value is not None}


def run_inspect_eval(
    config: InspectEvalConfig,
    task: ResolvedInspectTask,
    *,
    endpoint: OpenAIEndpoint,
    model_names: Sequence[str],
    log_dir: str | Path,
) -> InspectRunResult:
    """Run ``task`` once per served model name and return the log paths and a flat scores table.

    ``task`` comes from ``resolve_inspect_task`` (called before the model was served, so a bad
    ``eval_name`` costs no GPU time). ``model_names`` are the names the endpoint serves the base
    model and/or adapters under. Per-sample failures do not raise: they show as a non-success
    ``status`` in the result (call ``raise_for_failures``), so the logs can be uploaded first.
    A task that cannot be loaded at all (e.g. its file's imports fail) raises inspect's own error.
    """
    if not model_names:
        raise ValueError("model_names is empty: name at least one model the endpoint serves")
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import get_model

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    generate_config = _generate_config(config)
    logger.info(
        "inspect: running %s on %s at %s (logs in %s)",
        ", ".join(task.task_names),
        ", ".join(model_names),
        endpoint.base_url,
        log_dir,
    )
    # The first eval in a process sets the root logger's level to inspect's console level (warning);
    # restore it so the rest of the process (our loggers, the flow's) keeps its configured level.
    root_logger = logging.getLogger()
    root_level = root_logger.level
    # The models are not closed explicitly: inspect's OpenAI-compatible client can only be closed from async
    # code, and eval() owns its event loop. memoize=False keeps them out of inspect's model cache, so they are
    # released with this function's locals.
    models = [
        get_model(
            endpoint.inspect_model(name),
            base_url=endpoint.base_url,
            api_key=endpoint.api_key.get_secret_value(),
            memoize=False,  # a memoized model would keep the client alive under a key that embeds the API key
            **config.model_args,
        )
        for name in model_names
    ]
    try:
        logs = inspect_eval(
            list(task.specs),
            model=models,
            task_args=dict(task.task_args),
            log_dir=str(log_dir),
            log_format=config.log_format,
            limit=config.limit,
            epochs=config.epochs,
            display="none",
            log_level="warning",
            ctl_server=False,  # no control socket in a worker process
            score_display=False,
            log_header_only=True,  # scores are in the header; samples stay on disk, not in memory
            **generate_config,
            # The rest of the user's options (jobs.inspect_options): never one of the arguments above.
            **config.options,
        )
    finally:
        root_logger.setLevel(root_level)

    results = [
        InspectLog(
            path=Path(log.location),
            task=log.eval.task,
            model=log.eval.model,
            status=log.status,
            error=log.error.message if log.error is not None else None,
        )
        for log in logs
    ]
    for log in results:
        logger.info("inspect: %s on %s: %s, log %s", log.task, log.model, log.status, log.path)
    return InspectRunResult(logs=results, scores=scores_from_logs(logs))
