"""Evaluation compute: MMLU-Pro (``compute.evals.mmlu_pro``) and inspect-ai tasks (``compute.evals.inspect_runner``).

Plain Python with no Prefect: each runner takes local paths, a typed config and the means to reach
the model (a ``generate`` callable, or an OpenAI-compatible endpoint), and returns typed results.
"""
