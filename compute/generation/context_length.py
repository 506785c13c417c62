"""Context length: how long prompts and completions may be for a model (pure; reads config.json only)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class PromptTooLongError(ValueError):
    """A prompt that leaves no room for a single generated token."""


def model_context_limit(model_path: str | Path) -> int | None:
    """The longest sequence the model's ``config.json`` declares, or None when it declares none."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for section in (config, config.get("text_config") or {}):
        for key in _POSITION_KEYS:
            value = section.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def effective_max_model_len(requested: int, model_path: str | Path) -> int:
    """``requested``, but never longer than the model was built for (vLLM refuses that; transformers degrades)."""
    limit = model_context_limit(model_path)
    if limit is not None and requested > limit:
        logger.info("max_model_len %d exceeds the model's %d positions; using %d", requested, limit, limit)
        return limit
    return requested


def completion_budget(prompt_tokens: int, max_tokens: int, max_model_len: int) -> int:
    """Tokens a completion may have: ``max_tokens``, cut where the context ends (finish reason 'length')."""
    if prompt_tokens >= max_model_len:
        raise PromptTooLongError(
            f"the prompt has {prompt_tokens} tokens but the context length (max_model_len) is {max_model_len}; "
            "shorten the prompt or raise max_model_len"
        )
    return min(max_tokens, max_model_len - prompt_tokens)
