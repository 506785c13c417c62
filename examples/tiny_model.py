"""The model the examples use on the embedded default: a tiny local Llama (built once, no download).

On a GPU work pool, use a Hub ID instead (e.g. "unsloth/Qwen3-4B"): the rest of each example
stays the same.
"""

import os
from pathlib import Path


def tiny_model() -> str:
    from compute.tiny_model import build_tiny_model

    home = Path(os.environ.get("OW_HOME") or Path(__file__).resolve().parent.parent / ".ow")
    return str(build_tiny_model(home / "models" / "tiny-llama"))
