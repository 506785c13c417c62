"""The control tier imports parameter models, grouping and the vLLM command without loading heavy libraries."""

import subprocess
import sys

LIGHT_MODULES = [
    "jobs.inference",
    "jobs.serve",
    "jobs.server_plan",
    "jobs.adapter_config",
    "compute.generation.batch",
    "compute.generation.backends",
    "compute.generation.vllm_backend",
    "compute.serving.vllm_command",
    "compute.serving.server",
    "compute.serving.lifetime",
]
HEAVY = ["torch", "transformers", "peft", "vllm", "fastapi", "uvicorn", "trl", "datasets"]


def test_importing_generation_and_serving_modules_loads_no_heavy_library():
    code = (
        "import importlib, sys\n"
        f"for name in {LIGHT_MODULES!r}: importlib.import_module(name)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == ""
