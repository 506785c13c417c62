"""Batch generation: prompts from a JSONL file in, completions out, on transformers or vLLM.

- :mod:`~compute.generation.rows` reads and checks the input rows (pure);
- :mod:`~compute.generation.prompts` turns a row into prompt token IDs with the model's tokenizer;
- :mod:`~compute.generation.sampling` and :mod:`~compute.generation.completions` are the typed
  request and result every backend shares;
- :mod:`~compute.generation.transformers_backend` (CPU, or a GPU without vLLM) and
  :mod:`~compute.generation.vllm_backend` (CUDA) generate behind one interface;
- :mod:`~compute.generation.batch` streams a file through a backend: the job's entry point.

Nothing here imports torch, transformers or vLLM at module level.
"""
