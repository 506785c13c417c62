"""Custom jobs: the ``custom`` control flow (deployment ``custom/run``).

Parameters are the fields of :class:`jobs.custom.CustomJobConfig`; the client's
:class:`client.custom_jobs.CustomJob` fills them from a user's job class. The script runs in
``gpu-stage/custom`` (a pod on a ``runpod`` pool).
"""

from flows.job_flow import job_flow

custom = job_flow("custom", "custom", module=__name__)
