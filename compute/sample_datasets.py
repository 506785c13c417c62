"""Small, deterministic datasets in the formats the jobs accept, for the demo, tests and benchmarks.

Arithmetic facts are easy for a tiny model to memorise, so a few optimiser steps visibly lower
the loss; the same generator feeds every format so the datasets stay consistent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def _facts(rows: int) -> list[tuple[int, int]]:
    return [(i % 10, (i * 3) % 10) for i in range(rows)]


def conversations_rows(rows: int = 64, system_prompt: str | None = None) -> list[dict]:
    """``{"messages": [...]}`` rows: a user asks a sum, the assistant answers it."""
    out = []
    for a, b in _facts(rows):
        messages = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": f"What is {a} plus {b}?"})
        messages.append({"role": "assistant", "content": f"{a} plus {b} is {a + b}."})
        out.append({"messages": messages})
    return out


def preference_rows(rows: int = 64) -> list[dict]:
    """``{"prompt", "chosen", "rejected"}`` rows as message lists: the right sum is preferred."""
    out = []
    for a, b in _facts(rows):
        out.append(
            {
                "prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                "chosen": [{"role": "assistant", "content": f"{a} plus {b} is {a + b}."}],
                "rejected": [{"role": "assistant", "content": f"{a} plus {b} is {a + b + 3}."}],
            }
        )
    return out


def text_rows(rows: int = 64) -> list[dict]:
    """``{"text": ...}`` rows for base-model (non-chat) training and completion prompts."""
    return [{"text": f"{a} plus {b} is {a + b}."} for a, b in _facts(rows)]


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write rows as UTF-8 JSON Lines; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
