"""The fine-tuning job's GPU-stage function: inputs from the store, the recipe, outputs back."""

from __future__ import annotations

from compute.stage import StageContext, StageResult
from compute.training.recipe import FinetuneInputs, run_finetune
from jobs.finetune import TrainingConfig, configured_hf_org
from store.layout import checkpoints_prefix


def run_finetune_stage(config: TrainingConfig, context: StageContext) -> StageResult:
    inputs = FinetuneInputs(
        job_id=context.job_id,
        model=context.local_model(config.model),
        training_path=context.local_file(config.training_file),
        test_path=context.local_file(config.test_file) if config.test_file else None,
        work_dir=context.work_dir,
        store=context.store,
        reporter=context.reporter,
        hf_token=context.secrets.get("hf-token"),
        # The organisation the user configured; without one the name keeps its {org_id} placeholder
        # (pushing then refuses, naming the setting).
        output_model_name=config.output_model_name(job_id=context.job_id, org_id=configured_hf_org() or "{org_id}"),
        logp_paths={name: context.local_file(file_id) for name, file_id in config.logp_callback_datasets.items()},
        sampling_paths=[context.local_file(callback.dataset) for callback in config.sampling_callbacks or []],
    )
    result = run_finetune(config, inputs)
    return StageResult(
        outputs=result.outputs,
        metrics=result.metrics,
        details={
            "backend": result.backend,
            "resumed_from_step": result.resumed_from_step,
            "finetuned_model_id": inputs.output_model_name,
            "metrics_history": result.history,
        },
        # Checkpoints exist to survive a lost pod; once result.json is written they are dead weight.
        disposable_prefixes=[checkpoints_prefix(context.job_prefix)],
    )
