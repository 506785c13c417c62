"""The charts the Prefect UI shows: a training run's loss curve and an eval sweep's scores."""

from __future__ import annotations

import base64
import io
import math
import re

import pytest
from PIL import Image

from flows.evals import comparison_chart_markdown
from jobs.sweeps import SweepConfig, SweepEval
from tasks.charts import FIGURE_DPI, FIGURE_INCHES, image_markdown, loss_curve_png, scores_chart_png

LARGEST_CHART_BYTES = 100_000  # a version is stored in Prefect's database at every update


def training_history(steps: int, eval_every: int = 50) -> list[dict]:
    """Rows as the reporter keeps them: the Trainer's logs, evaluations on their own rows, a final summary row."""
    rows = []
    for step in range(1, steps + 1):
        rows.append(
            {
                "step": step,
                "loss": 2.5 * math.exp(-step / (steps / 4)) + 0.3 + 0.05 * math.sin(step),
                "learning_rate": 3e-3 * min(1.0, step / 10) * (1 - step / (steps + 1)),
                "grad_norm": 1.0 + 0.1 * math.cos(step),
                "epoch": step / 100,
            }
        )
        if step % eval_every == 0:
            rows.append({"step": step, "eval_loss": 2.5 * math.exp(-step / (steps / 4)) + 0.4, "eval_runtime": 1.5})
    rows.append({"step": steps, "train_loss": 1.1, "train_runtime": 120.0})
    return rows


def decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()  # raises on a truncated or corrupt file
    return image


def expected_size() -> tuple[int, int]:
    return round(FIGURE_INCHES[0] * FIGURE_DPI), round(FIGURE_INCHES[1] * FIGURE_DPI)


@pytest.mark.parametrize("steps", [1, 18, 300, 20_000])
def test_a_loss_curve_is_a_small_png_for_a_run_of_any_length(steps):
    png = loss_curve_png(training_history(steps))
    image = decoded(png)
    assert image.format == "PNG" and image.size == expected_size()
    assert len(png) < LARGEST_CHART_BYTES, len(png)


def test_the_same_history_draws_the_same_bytes():
    history = training_history(40)
    assert loss_curve_png(history) == loss_curve_png(list(history))


def test_no_loss_logged_means_no_chart():
    assert loss_curve_png([]) is None
    assert loss_curve_png([{"step": 1, "learning_rate": 1e-3, "grad_norm": 0.5}]) is None
    # train_loss is the Trainer's one run-wide average, not a curve.
    assert loss_curve_png([{"step": 9, "train_loss": 1.2, "train_runtime": 3.0}]) is None


def test_an_evaluation_loss_alone_or_a_tracked_datasets_loss_is_drawn():
    assert decoded(loss_curve_png([{"step": 5, "eval_loss": 1.0}, {"step": 10, "eval_loss": 0.8}])).size == expected_size()
    assert loss_curve_png([{"step": 5, "heldout_loss": 1.0, "heldout_logp": -4.0}]) is not None


def test_missing_and_non_finite_values_are_left_out_not_drawn_as_zero():
    history = [
        {"step": 1, "loss": 2.0, "learning_rate": None},
        {"step": 2, "loss": float("nan")},
        {"step": 3, "loss": float("inf"), "learning_rate": 1e-3},
        {"step": None, "loss": 1.0},
        {"step": 4, "loss": True},
        {"step": 5, "loss": 1.5},
    ]
    assert decoded(loss_curve_png(history)).size == expected_size()


def test_a_sweep_chart_draws_every_model_on_every_evaluation_and_skips_missing_scores():
    table = [
        {"model": "/tmp/models/tiny-model", "arithmetic": 0.25, "mmlu-pro": 0.5},
        {"model": "ftjob-" + "3f2a9c1b7d0e" * 5, "arithmetic": 0.75, "mmlu-pro": None},
    ]
    png = scores_chart_png(table, ["arithmetic", "mmlu-pro"])
    assert decoded(png).size == expected_size() and len(png) < LARGEST_CHART_BYTES


def test_a_large_sweep_stays_small():
    evaluations = [f"eval-{index}" for index in range(8)]
    table = [{"model": f"org/model-{index}", **{name: index / 20 for name in evaluations}} for index in range(12)]
    png = scores_chart_png(table, evaluations)
    assert len(png) < LARGEST_CHART_BYTES


def test_a_sweep_without_any_score_has_no_chart():
    assert scores_chart_png([{"model": "m", "arithmetic": None}], ["arithmetic"]) is None
    assert scores_chart_png([], ["arithmetic"]) is None


def test_the_markdown_carries_the_png_as_a_data_uri_the_ui_renders():
    png = loss_curve_png(training_history(5))
    markdown = image_markdown("loss curve of ftjob-1", png, caption="Loss so far.")
    match = re.search(r"!\[loss curve of ftjob-1\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match and base64.b64decode(match.group(1)) == png
    assert markdown.startswith("Loss so far.\n\n")


def test_the_sweeps_chart_markdown_names_the_sweep_and_is_none_without_scores():
    config = SweepConfig(
        sweep_name="nightly",
        models=["a", "b"],
        evals=[SweepEval(name="arithmetic", kind="inspect"), SweepEval(name="mc", kind="multiple-choice")],
    )
    markdown = comparison_chart_markdown(config, [{"model": "a", "arithmetic": 0.5, "mc": 1.0}, {"model": "b", "arithmetic": 0.0, "mc": None}])
    assert "Sweep `nightly`" in markdown and "](data:image/png;base64," in markdown
    assert comparison_chart_markdown(config, [{"model": "a", "arithmetic": None, "mc": None}]) is None
