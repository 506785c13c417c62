"""API deployments: the ``api`` control flow (deployment ``api/serve``).

Parameters are the fields of :class:`jobs.serve.ServeConfig`: a base model and LoRA adapters of
that base (adapters of other bases are refused before any GPU is requested). The server runs in
``gpu-stage/api`` until it is idle for ``idle_timeout_seconds``, reaches
``hard_timeout_seconds``, or the run is cancelled; both flow runs stay Running meanwhile.
The endpoint is published as a link artifact and in ``jobs/<job_id>/endpoint.json``; its bearer
token is the Prefect Secret named there (``token_secret``).
"""

from flows.job_flow import job_flow

api = job_flow("api", "api", module=__name__)
