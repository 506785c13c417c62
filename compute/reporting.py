"""How long-running compute reports what it is doing, without knowing who listens.

Training, generation and evaluation call a :class:`Reporter`; the GPU-stage flow passes one
that turns the calls into Prefect artifacts, logs and events, a plain script passes
:class:`LoggingReporter`. Compute code therefore never imports Prefect.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class Reporter(Protocol):
    def progress(self, done: int, total: int, description: str = "") -> None:
        """Units of work done out of ``total`` (calls may be frequent; implementations throttle)."""

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Metrics logged at ``step`` (loss, learning rate, grad norm, eval loss, …)."""

    def table(self, name: str, rows: list[dict[str, Any]], description: str = "") -> None:
        """A table worth showing to the user (samples, evaluation results)."""

    def event(self, name: str, payload: dict[str, Any]) -> None:
        """Something automations may react to (``checkpoint.saved``, …)."""

    def link(self, name: str, url: str, description: str = "") -> None:
        """A URL the user should be able to click (an endpoint, an output)."""

    def log(self, message: str) -> None:
        """A line for the job's log."""


class LoggingReporter:
    """Reports to the standard ``logging`` module; the default outside Prefect."""

    def __init__(self, log: logging.Logger | None = None):
        self._log = log or logger
        self.history: list[dict[str, Any]] = []

    def progress(self, done: int, total: int, description: str = "") -> None:
        pass

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.history.append({"step": step, **values})
        self._log.info("step %s: %s", step, values)

    def table(self, name: str, rows: list[dict[str, Any]], description: str = "") -> None:
        self._log.info("%s: %d rows", name, len(rows))

    def event(self, name: str, payload: dict[str, Any]) -> None:
        self._log.info("event %s %s", name, payload)

    def link(self, name: str, url: str, description: str = "") -> None:
        self._log.info("%s: %s", name, url)

    def log(self, message: str) -> None:
        self._log.info(message)
