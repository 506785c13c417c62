"""Serving models behind an OpenAI-compatible HTTP API.

- :mod:`~compute.serving.vllm_command`: the ``vllm serve`` argv and environment (GPU);
- :mod:`~compute.serving.server`: a transformers server for machines where vLLM cannot run, with
  the same model names, authentication and endpoints, started and stopped from Python.

Nothing here imports torch, transformers or vLLM at module level.
"""
