"""Fine-tuning: the ``finetune`` control flow (deployments ``finetune/sft``, ``finetune/dpo``, ``finetune/orpo``,
``finetune/weighted-sft``).

Its parameters are the fields of :class:`jobs.finetune.TrainingConfig`; the deployments differ
only in their default ``loss``. The training itself runs in ``gpu-stage/finetune``.

    prefect deployment run finetune/sft --param model=… --param training_file=conversations:file-… --watch
"""

from flows.job_flow import job_flow

finetune = job_flow("finetune", "finetune", module=__name__)
