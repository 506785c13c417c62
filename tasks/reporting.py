"""The Prefect side of :class:`compute.reporting.Reporter`: artifacts, logs and events.

What a user sees in the flow run of a job: a progress artifact (updated at most every
``progress_interval`` seconds), a metrics table (loss, learning rate, grad norm, eval loss, …;
a new version at most every ``table_interval`` seconds and at the end), tables the job
publishes (samples, eval results), log lines, and ``ow.job.*`` events automations can react to.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event

METRIC_COLUMNS_FIRST = ("step", "loss", "eval_loss", "learning_rate", "grad_norm", "epoch")


def artifact_key(job_id: str, name: str) -> str:
    """Artifact keys allow lower-case letters, digits and dashes; 12 hex digits tell jobs apart."""
    prefix, _, digest = job_id.partition("-")
    key = re.sub(r"[^a-z0-9-]+", "-", f"{prefix}-{digest[:12]}-{name}".lower())
    return re.sub(r"-{2,}", "-", key).strip("-")


def emit_job_event(name: str, job_id: str, job_type: str, payload: dict[str, Any] | None = None) -> None:
    emit_event(
        event=f"ow.job.{name}",
        resource={
            "prefect.resource.id": f"ow.job.{job_id}",
            "prefect.resource.name": job_id,
            "ow.job-type": job_type,
        },
        payload=payload or {},
    )


class PrefectReporter:
    def __init__(self, job_id: str, job_type: str, progress_interval: float = 3.0, table_interval: float = 15.0):
        self.job_id = job_id
        self.job_type = job_type
        self.progress_interval = progress_interval
        self.table_interval = table_interval
        self.logger = get_run_logger()
        self.rows: list[dict[str, Any]] = []
        self._progress_id = None
        self._last_progress = 0.0
        self._last_table = 0.0
        self._last_fraction = -1.0

    # -- Reporter ---------------------------------------------------------------------------

    def progress(self, done: int, total: int, description: str = "") -> None:
        if total <= 0:
            return
        fraction = min(100.0, 100.0 * done / total)
        now = time.monotonic()
        finished = done >= total
        if fraction == self._last_fraction or (now - self._last_progress < self.progress_interval and not finished):
            return
        text = f"{description}: {done}/{total}" if description else f"{done}/{total}"
        if self._progress_id is None:
            self._progress_id = create_progress_artifact(
                progress=fraction, key=artifact_key(self.job_id, "progress"), description=text
            )
        else:
            update_progress_artifact(artifact_id=self._progress_id, progress=fraction, description=text)
        self._last_progress, self._last_fraction = now, fraction

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.rows.append({"step": step, **values})
        shown = ", ".join(f"{key}={value:.4g}" for key, value in values.items())
        self.logger.info("step %s: %s", step, shown)
        if time.monotonic() - self._last_table >= self.table_interval:
            self.flush_metrics()

    def table(self, name: str, rows: list[dict[str, Any]], description: str = "") -> None:
        create_table_artifact(table=rows, key=artifact_key(self.job_id, name), description=description or name)

    def event(self, name: str, payload: dict[str, Any]) -> None:
        emit_job_event(name, self.job_id, self.job_type, payload)

    def link(self, name: str, url: str, description: str = "") -> None:
        create_link_artifact(link=url, link_text=description or url, key=artifact_key(self.job_id, name))

    def log(self, message: str) -> None:
        self.logger.info(message)

    # -- flow-side helpers ------------------------------------------------------------------

    def flush_metrics(self) -> None:
        if not self.rows:
            return
        columns = [c for c in METRIC_COLUMNS_FIRST if any(c in row for row in self.rows)]
        columns += sorted({key for row in self.rows for key in row} - set(columns))
        table = [{column: row.get(column) for column in columns} for row in self.rows]
        create_table_artifact(
            table=table,
            key=artifact_key(self.job_id, "metrics"),
            description=f"Metrics logged by {self.job_id}",
        )
        self._last_table = time.monotonic()

    def finish(self, summary_markdown: str, links: dict[str, str]) -> None:
        self.flush_metrics()
        if self._progress_id is not None and self._last_fraction < 100:
            update_progress_artifact(artifact_id=self._progress_id, progress=100.0, description="done")
        for name, uri in links.items():
            if "://" not in uri:  # e.g. a file ID: shown in the summary, not a clickable link
                continue
            create_link_artifact(link=uri, link_text=f"{name}: {uri}", key=artifact_key(self.job_id, name))
        create_markdown_artifact(markdown=summary_markdown, key=artifact_key(self.job_id, "summary"))
