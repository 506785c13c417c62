"""Charts for the Prefect UI: a training run's loss curve and an eval sweep's scores, as PNG images.

Prefect's UI (the default V2 UI of Prefect 3.9) renders markdown artifacts with react-markdown and
rehype-sanitize, and lets an ``<img>`` keep a ``src`` that is a ``data:image/…`` URI; raw ``<svg>``
elements are stripped, and an image served from the artifact store has no URL a browser can open
(a local-directory store is not served at all). So a chart travels inside its markdown artifact as
a base64 PNG (:func:`image_markdown`), small enough (tens of KB) to store once per update.

The functions are pure (rows in, PNG bytes out). matplotlib is imported when a chart is drawn, not
when a flow imports this module, and only through its object-oriented API on the Agg canvas: no
pyplot, so no global figure state, no GUI backend, and drawing from the reporter's sender thread is safe.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

# Small on purpose: a version of the chart is stored in Prefect's database at every update.
FIGURE_INCHES = (7.0, 4.2)
FIGURE_DPI = 80
LONGEST_LABEL = 40
LEGEND_COLUMNS = 3
LEGEND_ROW_INCHES = 0.2
MOST_LABELLED_BARS = 24


def loss_curve_png(history: Sequence[Mapping[str, Any]]) -> bytes | None:
    """The loss curve of a training run: losses against step above, the learning rate below.

    ``history`` holds the reporter's metric rows (``{"step": 3, "loss": 1.2, "learning_rate": …}``).
    Every ``*loss`` column is drawn (``loss``, ``eval_loss``, a tracked dataset's ``<name>_loss``)
    except ``train_loss``, the Trainer's one run-wide average. None when no row has a loss.
    """
    losses = [name for name in _columns(history) if _is_loss_curve(name)]
    if not losses:
        return None
    from matplotlib.ticker import MaxNLocator

    figure, canvas = _figure()
    loss_axes, rate_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    for name in losses:
        steps, values = _series(history, name)
        # Evaluations are sparse: markers show each one even when only one or two exist.
        loss_axes.plot(steps, values, label=name, marker="o" if len(steps) < 40 or name != "loss" else None, markersize=3)
    loss_axes.set_ylabel("loss")
    loss_axes.set_title("Loss by step")
    loss_axes.legend(loc="upper right", fontsize="small")
    loss_axes.grid(alpha=0.3)
    steps, rates = _series(history, "learning_rate")
    if steps:
        rate_axes.plot(steps, rates, color="tab:gray")
        rate_axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    else:
        rate_axes.text(0.5, 0.5, "no learning rate logged", ha="center", va="center", transform=rate_axes.transAxes)
    rate_axes.set_ylabel("learning rate")
    rate_axes.set_xlabel("step")
    rate_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    rate_axes.grid(alpha=0.3)
    return _png(figure, canvas)


def scores_chart_png(table: Sequence[Mapping[str, Any]], evaluations: Sequence[str]) -> bytes | None:
    """An eval sweep's comparison table as grouped bars: one group per evaluation, one bar per model.

    ``table`` has one row per model (``{"model": …, <evaluation>: score or None, …}``). A missing
    score draws no bar. None when there is no score at all.
    """
    models = [str(row["model"]) for row in table]
    if not any(_number(row.get(name)) is not None for row in table for name in evaluations):
        return None
    from matplotlib import colormaps

    legend_columns = min(len(models), LEGEND_COLUMNS)
    legend_rows = math.ceil(len(models) / legend_columns)
    figure, canvas = _figure(extra_height=LEGEND_ROW_INCHES * (legend_rows - 1))
    axes = figure.subplots()
    # Past ten models tab10 would repeat its colours; tab20 tells twenty apart.
    axes.set_prop_cycle(color=colormaps["tab10" if len(models) <= 10 else "tab20"].colors)
    width = 0.8 / max(1, len(models))
    for index, (model, row) in enumerate(zip(models, table, strict=True)):
        positions, heights = [], []
        for group, name in enumerate(evaluations):
            score = _number(row.get(name))
            if score is not None:
                positions.append(group - 0.4 + width * (index + 0.5))
                heights.append(score)
        bars = axes.bar(positions, heights, width, label=_shorten(model))
        if len(models) * len(evaluations) <= MOST_LABELLED_BARS:
            axes.bar_label(bars, fmt="%.3g", fontsize="x-small", padding=1)
    axes.set_xticks(range(len(evaluations)), [_shorten(name) for name in evaluations])
    axes.set_ylabel("score")
    axes.set_title("Score per model and evaluation")
    axes.grid(axis="y", alpha=0.3)
    figure.legend(fontsize="small", loc="outside lower center", ncols=legend_columns)
    return _png(figure, canvas)


def image_markdown(alt_text: str, png: bytes, caption: str = "") -> str:
    """Markdown that shows ``png`` inline in the Prefect UI (a data URI; see the module docstring)."""
    encoded = base64.b64encode(png).decode("ascii")
    image = f"![{alt_text}](data:image/png;base64,{encoded})"
    return f"{caption}\n\n{image}\n" if caption else f"{image}\n"


def _figure(extra_height: float = 0.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = FIGURE_INCHES
    figure = Figure(figsize=(width, height + extra_height), dpi=FIGURE_DPI, layout="constrained")
    return figure, FigureCanvasAgg(figure)


def _png(figure, canvas) -> bytes:
    buffer = io.BytesIO()
    # No "Software" tag: the same rows always give the same bytes.
    canvas.print_png(buffer, metadata={"Software": None})
    return buffer.getvalue()


def _columns(history: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in history:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _is_loss_curve(name: str) -> bool:
    return (name == "loss" or name.endswith("_loss")) and name != "train_loss"


def _series(history: Sequence[Mapping[str, Any]], name: str) -> tuple[list[float], list[float]]:
    points = [(_number(row.get("step")), _number(row.get(name))) for row in history]
    kept = [(step, value) for step, value in points if step is not None and value is not None]
    return [step for step, _ in kept], [value for _, value in kept]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _shorten(label: str) -> str:
    """Model references can be long (paths, job IDs): their start and end tell them apart."""
    if len(label) <= LONGEST_LABEL:
        return label
    head = (LONGEST_LABEL - 1) // 2
    return label[:head] + "…" + label[-(LONGEST_LABEL - 1 - head) :]
