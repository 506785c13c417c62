"""MMLU-Pro evaluation: dataset validation, prompts, answer extraction, scoring and the runner.

The runner is ``run_mmlu_pro``; the rest is pure and usable on its own (e.g. ``validate_mmlu_pro_file``
in a validation step before any GPU is started, ``summary_table`` for a table artifact).
"""

from compute.evals.mmlu_pro.answers import extract_answer
from compute.evals.mmlu_pro.dataset import (
    MmluProFileSummary,
    MmluProFormatError,
    MmluProQuestion,
    load_mmlu_pro_file,
    validate_mmlu_pro_file,
)
from compute.evals.mmlu_pro.prompts import ChatMessage, FewshotShortageError, Prompt, build_prompt
from compute.evals.mmlu_pro.runner import GenerateFn, MmluProResult, SamplingParams, run_mmlu_pro
from compute.evals.mmlu_pro.scoring import (
    CategoryScore,
    MmluProSummary,
    QuestionResult,
    score_reply,
    summarize,
    summary_table,
)

__all__ = [
    "CategoryScore",
    "ChatMessage",
    "FewshotShortageError",
    "GenerateFn",
    "MmluProFileSummary",
    "MmluProFormatError",
    "MmluProQuestion",
    "MmluProResult",
    "MmluProSummary",
    "Prompt",
    "QuestionResult",
    "SamplingParams",
    "build_prompt",
    "extract_answer",
    "load_mmlu_pro_file",
    "run_mmlu_pro",
    "score_reply",
    "summarize",
    "summary_table",
    "validate_mmlu_pro_file",
]
