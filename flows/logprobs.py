"""Log-probabilities: the ``inference`` control flow of ``logprobs`` jobs (deployment ``inference/logprobs``).

Parameters are the fields of :class:`jobs.logprobs.LogprobsConfig`; scoring runs in
``gpu-stage/logprobs`` (transformers, on a GPU where there is one; see :mod:`compute.logprobs.scorers`) and writes
``jobs/<job_id>/logprobs.jsonl``. A repeated job is a cache hit.

    prefect deployment run inference/logprobs --param model=ftjob-… --param input_file=conversations:file-… --watch
"""

from flows.job_flow import job_flow

logprobs = job_flow("logprobs", "inference", module=__name__)
