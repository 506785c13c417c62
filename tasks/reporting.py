"""The Prefect side of :class:`compute.reporting.Reporter`: artifacts, logs and events.

What a user sees in the flow run of a job: a progress artifact (updated at most every
``progress_interval`` seconds), a metrics table (loss, learning rate, grad norm, eval loss, …,
rounded to :data:`METRIC_DIGITS` significant digits; a new version at most every ``table_interval``
seconds, less often once the table is long (see :func:`metrics_table_interval`), and at the end),
a loss-curve chart redrawn with each version of that table (:mod:`tasks.charts`), tables the job
publishes (samples, eval results), log lines, and ``ow.job.*`` events automations can react to.

Every call that talks to the Prefect API goes through one background sender thread, in order:
training and generation hand a report over and carry on, so a slow or busy server never
stalls a GPU step (on the embedded default the server shares the machine's CPUs with the job).
A report that fails is logged and dropped; the UI is not worth a lost training run.
"""

from __future__ import annotations

import contextvars
import math
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.events import emit_event

from infra.local.cpu_policy import schedule_this_thread_as_batch
from tasks.charts import image_markdown, loss_curve_png

METRIC_COLUMNS_FIRST = ("step", "loss", "eval_loss", "learning_rate", "grad_norm", "epoch")
METRIC_DIGITS = 4
SECONDS_PER_TABLE_ROW = 0.05
SHORT_DIGEST_LENGTH = 12
# Schemes a browser opens from a web page; file:// (a local-directory store) and s3:// are not.
BROWSER_SCHEMES = ("http://", "https://")


def metrics_table_interval(rows: int, minimum: float) -> float:
    """Seconds to wait before the next version of a metrics table of ``rows`` rows.

    Every version stores the whole table in Prefect's database. At a fixed interval a long run
    would store O(rows²): a 3-hour job logging a step a second, every 15 s, leaves ~720 versions
    averaging 5,400 rows. Waiting in proportion to the table's length makes the versions grow
    geometrically, so all of them together stay a small multiple of the final table.
    """
    return max(minimum, rows * SECONDS_PER_TABLE_ROW)


def short_job_id(job_id: str) -> str:
    """``ftjob-3f2a9c1b7d0e`` for a 64-digit job ID: enough to tell jobs apart in a heading or a key."""
    prefix, dash, digest = job_id.partition("-")
    return f"{prefix}{dash}{digest[:SHORT_DIGEST_LENGTH]}"


def artifact_key(job_id: str, name: str) -> str:
    """Artifact keys allow lower-case letters, digits and dashes; the short job ID tells jobs apart."""
    key = re.sub(r"[^a-z0-9-]+", "-", f"{short_job_id(job_id)}-{name}".lower())
    return re.sub(r"-{2,}", "-", key).strip("-")


def significant(value: Any, digits: int = METRIC_DIGITS) -> Any:
    """``value`` rounded to ``digits`` significant digits if it is a float; anything else as it is.

    A table cell stays a number (the UI sorts and aligns it), only without 17 digits of noise.
    """
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value


def opens_in_a_browser(uri: str) -> bool:
    """True for a URL a web page can link to (not ``file://`` on the store's machine, not ``s3://``)."""
    return uri.startswith(BROWSER_SCHEMES)


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


class ReportSender:
    """Runs API calls in order on one daemon thread, each in the context of the code that asked.

    The context (the flow run Prefect's artifact and event functions attach to) is copied when a
    call is queued; :meth:`drain` waits until everything queued so far has been sent.
    """

    def __init__(self, logger):
        self._logger = logger
        self._calls: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ow-report-sender", daemon=True)
                self._thread.start()
        self._calls.put((contextvars.copy_context(), call, args, kwargs))

    def drain(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        with self._calls.all_tasks_done:
            while self._calls.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._logger.warning("gave up waiting for %d report(s) to reach the Prefect API", self._calls.unfinished_tasks)
                    return
                self._calls.all_tasks_done.wait(remaining)

    def _run(self) -> None:
        try:
            schedule_this_thread_as_batch()  # it only waits on the API; the job's threads come first
        except ValueError as exc:  # a malformed OW_BATCH_SCHEDULING must not stop the reports
            self._logger.warning("%s", exc)
        while True:
            context, call, args, kwargs = self._calls.get()
            try:
                context.run(call, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a report is not worth failing the job for
                self._logger.warning("could not send %s to the Prefect API: %s", getattr(call, "__name__", call), exc)
            finally:
                self._calls.task_done()


class PrefectReporter:
    def __init__(self, job_id: str, job_type: str, progress_interval: float = 3.0, table_interval: float = 15.0):
        self.job_id = job_id
        self.job_type = job_type
        self.progress_interval = progress_interval
        self.table_interval = table_interval
        self.logger = get_run_logger()
        self.rows: list[dict[str, Any]] = []
        self._sender = ReportSender(self.logger)
        self._progress_id = None
        self._loss_curve_id = None
        # Never: the first progress and the first metrics row are shown at once. (Not 0.0: the monotonic
        # clock counts from boot, so on a machine up for less than an interval, 0.0 was "just now".)
        self._last_progress = float("-inf")
        self._last_table = float("-inf")
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
        self._sender.send(self._send_progress, fraction, text)
        self._last_progress, self._last_fraction = now, fraction

    def _send_progress(self, fraction: float, text: str) -> None:
        if self._progress_id is None:
            self._progress_id = create_progress_artifact(
                progress=fraction, key=artifact_key(self.job_id, "progress"), description=text
            )
        else:
            update_progress_artifact(artifact_id=self._progress_id, progress=fraction, description=text)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.rows.append({"step": step, **values})
        shown = ", ".join(f"{key}={value:.4g}" for key, value in values.items())
        self.logger.info("step %s: %s", step, shown)
        if time.monotonic() - self._last_table >= metrics_table_interval(len(self.rows), self.table_interval):
            self.flush_metrics()

    def table(self, name: str, rows: list[dict[str, Any]], description: str = "") -> None:
        self._sender.send(
            create_table_artifact, table=list(rows), key=artifact_key(self.job_id, name), description=description or name
        )

    def event(self, name: str, payload: dict[str, Any]) -> None:
        self._sender.send(emit_job_event, name, self.job_id, self.job_type, payload)

    def link(self, name: str, url: str, description: str = "") -> None:
        self._sender.send(create_link_artifact, link=url, link_text=description or url, key=artifact_key(self.job_id, name))

    def log(self, message: str) -> None:
        self.logger.info(message)

    # -- flow-side helpers ------------------------------------------------------------------

    def flush_metrics(self) -> None:
        if not self.rows:
            return
        columns = [c for c in METRIC_COLUMNS_FIRST if any(c in row for row in self.rows)]
        columns += sorted({key for row in self.rows for key in row} - set(columns))
        table = [{column: significant(row.get(column)) for column in columns} for row in self.rows]
        self._sender.send(
            create_table_artifact,
            table=table,
            key=artifact_key(self.job_id, "metrics"),
            description=f"Metrics logged by {self.job_id}",
        )
        # Drawn on the sender thread from a copy: matplotlib's import and drawing never stall a step.
        self._sender.send(self._send_loss_curve, [dict(row) for row in self.rows])
        self._last_table = time.monotonic()

    def _send_loss_curve(self, rows: list[dict[str, Any]]) -> None:
        """The loss-curve chart: created once, then updated in place (one stored image, not one a version)."""
        png = loss_curve_png(rows)
        if png is None:  # no loss logged (yet): nothing worth drawing
            return
        last_step = rows[-1].get("step")
        markdown = image_markdown(
            f"loss curve of {self.job_id}",
            png,
            caption=f"Loss and learning rate of {short_job_id(self.job_id)} up to step {last_step} (the metrics table has the numbers).",
        )
        description = f"Loss curve of {short_job_id(self.job_id)}, up to step {last_step}"
        if self._loss_curve_id is None:
            self._loss_curve_id = create_markdown_artifact(
                markdown=markdown, key=artifact_key(self.job_id, "loss-curve"), description=description
            )
        else:
            with get_client(sync_client=True) as client:
                client.update_artifact(self._loss_curve_id, ArtifactUpdate(data=markdown, description=description))

    def drain(self) -> None:
        """Wait until every report so far has reached the API (before the flow run ends)."""
        self._sender.drain()

    def finish(self, summary_markdown: str, links: dict[str, str]) -> None:
        self.flush_metrics()
        if self._last_fraction >= 0 and self._last_fraction < 100:
            self._sender.send(self._send_progress, 100.0, "done")
        for name, uri in links.items():
            if not opens_in_a_browser(uri):  # a file ID, file://, s3://: the summary says how to get it
                continue
            self.link(name, uri, f"{name}: {uri}")
        self._sender.send(
            create_markdown_artifact,
            markdown=summary_markdown,
            key=artifact_key(self.job_id, "summary"),
            description=f"Summary of {short_job_id(self.job_id)}",
        )
        self.drain()
