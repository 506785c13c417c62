"""What a LoRA adapter's ``adapter_config.json`` says about it: its base model and its rank.

peft writes this file with every adapter (``save_pretrained``). Serving needs two facts from it
before any weights are loaded: which base model the adapter belongs to (adapters are grouped by
base model, one server each) and its largest rank (vLLM reserves memory for ``--max-lora-rank``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_NAME = "adapter_config.json"


class AdapterConfigError(ValueError):
    """An adapter directory without a usable ``adapter_config.json``."""


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of a local adapter directory."""
    path = Path(adapter_dir) / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterConfigError(f"{path}: not found; {adapter_dir} is not a peft LoRA adapter directory") from None
    except json.JSONDecodeError as exc:
        raise AdapterConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise AdapterConfigError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def adapter_base_model(adapter_dir: str | Path) -> str:
    """The ``base_model_name_or_path`` the adapter was trained on."""
    base = read_adapter_config(adapter_dir).get("base_model_name_or_path")
    if not isinstance(base, str) or not base.strip():
        raise AdapterConfigError(f"{Path(adapter_dir) / CONFIG_NAME}: base_model_name_or_path is missing or empty")
    return base.strip()


def adapter_rank(adapter_dir: str | Path) -> int:
    """The largest LoRA rank in the adapter: ``r``, or a larger per-module rank from ``rank_pattern``."""
    config = read_adapter_config(adapter_dir)
    where = Path(adapter_dir) / CONFIG_NAME
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterConfigError(f"{where}: 'r' must be a positive integer (the LoRA rank), got {rank!r}")
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict):
        raise AdapterConfigError(f"{where}: 'rank_pattern' must be an object of module pattern → rank")
    for module, module_rank in pattern.items():
        if isinstance(module_rank, bool) or not isinstance(module_rank, int) or module_rank < 1:
            raise AdapterConfigError(f"{where}: rank_pattern[{module!r}] must be a positive integer, got {module_rank!r}")
        rank = max(rank, module_rank)
    return rank
