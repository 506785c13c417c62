"""Batch inference: the ``inference`` control flow (deployment ``inference/batch``).

Parameters are the fields of :class:`jobs.inference.InferenceConfig`; generation runs in
``gpu-stage/inference`` (vLLM on a GPU, transformers on CPU) and writes
``jobs/<job_id>/outputs.jsonl``. A repeated job is a cache hit.

    prefect deployment run inference/batch --param model=ftjob-… --param input_file=conversations:file-… --watch
"""

from flows.job_flow import job_flow

inference = job_flow("inference", "inference", module=__name__)
