"""The built-in job types, declared once each (see :mod:`jobs.registry`)."""

from __future__ import annotations

from jobs.custom import CustomJobConfig, check_params_against_schema
from jobs.datasets import WEIGHTED_CONVERSATIONS, RowError, weighted_training_row_check
from jobs.evals import InspectEvalConfig, MmluProConfig
from jobs.file_ids import is_file_id
from jobs.finetune import WEIGHTED_LOSSES, WEIGHTED_TRAINING_PURPOSES, TrainingConfig
from jobs.inference import InferenceConfig
from jobs.logprobs import LogprobsConfig, check_logprobs_row
from jobs.multiple_choice import QUESTIONS_PURPOSE, MultipleChoiceConfig
from jobs.registry import InputFile, InputModel, JobSpec, register
from jobs.serve import ServeConfig

# -- fine-tuning ---------------------------------------------------------------------------------


def _sft_row_needs_assistant_turn(row: dict) -> None:
    """With response-only loss, a chat row without an assistant turn trains nothing."""
    if "messages" in row and not any(message.get("role") == "assistant" for message in row["messages"]):
        raise RowError(
            "messages has no assistant turn, so train_on_responses_only leaves nothing to train on"
        )


def _finetune_input_files(config: TrainingConfig) -> list[InputFile]:
    training_purposes = ("conversations",) if config.loss == "sft" else ("preference",)
    row_check = (
        _sft_row_needs_assistant_turn if config.loss == "sft" and config.train_on_responses_only else None
    )
    if config.loss in WEIGHTED_LOSSES:
        training_purposes = WEIGHTED_TRAINING_PURPOSES
        row_check = weighted_training_row_check(config.train_on_responses_only)
    files = [InputFile("training_file", config.training_file, training_purposes, row_check)]
    if config.test_file:
        files.append(InputFile("test_file", config.test_file, training_purposes, row_check))
    for name, file_id in config.logp_callback_datasets.items():
        files.append(
            InputFile(
                f"logp_callback_datasets.{name}",
                file_id,
                ("conversations", "preference", WEIGHTED_CONVERSATIONS),
            )
        )
    for index, callback in enumerate(config.sampling_callbacks or []):
        files.append(
            InputFile(
                f"sampling_callbacks[{index}].dataset",
                callback.dataset,
                ("conversations", WEIGHTED_CONVERSATIONS),
            )
        )
    return files


def _finetune_vram_gb(config: TrainingConfig, model_config: dict | None) -> float:
    from compute.vram import estimate_training_vram_gb

    return estimate_training_vram_gb(config, model_config)


FINETUNE = register(
    JobSpec(
        job_type="finetune",
        id_prefix="ftjob",
        params_model=TrainingConfig,
        stage="compute.training.stage:run_finetune_stage",
        input_files=_finetune_input_files,
        input_models=lambda config: [InputModel("model", config.model)],
        vram_gb=_finetune_vram_gb,
        id_suffix=lambda config: config.job_id_suffix,
        secrets=("hf-token",),
        control_deployment=lambda config: (
            f"finetune/{config.loss.replace('_', '-')}"
        ),  # weighted_sft: finetune/weighted-sft
        description="LoRA fine-tuning (SFT, DPO, ORPO, weighted SFT) with OpenWeights' parameters.",
    )
)


# -- batch inference -----------------------------------------------------------------------------


def _inference_input_files(config: InferenceConfig) -> list[InputFile]:
    from compute.generation.rows import inference_row_check

    return [
        InputFile("input_file", config.input_file, ("conversations",), inference_row_check(config.prefill))
    ]


def _generation_vram_gb(config, model_config: dict | None) -> float:
    """GPU memory of a job that loads ``config.model`` to generate or score with ``config.max_model_len``
    (batch inference, log-probabilities, evals)."""
    from compute.vram import estimate_inference_vram_gb

    return estimate_inference_vram_gb(model_config, config.model, max_model_len=config.max_model_len)


def _model_and_adapters(config) -> list[InputModel]:
    """``model`` and each of ``lora_adapters`` (API deployments, evals)."""
    return [InputModel("model", config.model)] + [
        InputModel(f"lora_adapters[{index}]", adapter) for index, adapter in enumerate(config.lora_adapters)
    ]


INFERENCE = register(
    JobSpec(
        job_type="inference",
        id_prefix="inferencejob",
        params_model=InferenceConfig,
        stage="compute.generation.stage:run_inference_stage",
        input_files=_inference_input_files,
        input_models=lambda config: [InputModel("model", config.model)],
        vram_gb=_generation_vram_gb,
        id_suffix=lambda config: config.job_id_suffix,
        control_deployment=lambda config: "inference/batch",
        description="Batch inference: completions for every row of a conversations or text JSONL file.",
    )
)


LOGPROBS = register(
    JobSpec(
        job_type="logprobs",
        id_prefix="lpjob",  # OpenWeights' prefix for its logprob jobs
        params_model=LogprobsConfig,
        stage="compute.logprobs.stage:run_logprobs_stage",
        input_files=lambda config: [
            InputFile("input_file", config.input_file, ("conversations",), check_logprobs_row)
        ],
        input_models=lambda config: [InputModel("model", config.model)],
        vram_gb=_generation_vram_gb,
        id_suffix=lambda config: config.job_id_suffix,
        control_deployment=lambda config: "inference/logprobs",
        description="Log-probability of every assistant token (and the total per message) of every row of a "
        "conversations file, under a model or adapter.",
    )
)


# -- API deployments -----------------------------------------------------------------------------


def _serve_checks(config: ServeConfig, store) -> list[str]:
    """Every adapter must be an adapter of ``model``: one server serves one base model."""
    from jobs.model_refs import adapter_base
    from jobs.server_plan import MixedBaseModelsError, check_adapter_bases

    problems = []
    if adapter_base(config.model, store) is not None:
        problems.append(
            f"model: {config.model!r} is a LoRA adapter; serve its base model and list it in lora_adapters"
        )
    try:
        check_adapter_bases(
            config, {adapter: adapter_base(adapter, store) for adapter in config.lora_adapters}
        )
    except MixedBaseModelsError as exc:
        problems.append(f"lora_adapters: {exc}")
    return problems


def _serve_vram_gb(config: ServeConfig, model_config: dict | None) -> float:
    from compute.vram import estimate_inference_vram_gb

    return estimate_inference_vram_gb(
        model_config,
        config.model,
        max_model_len=config.max_model_len,
        max_num_seqs=min(config.max_num_seqs, 64),
    )


API = register(
    JobSpec(
        job_type="api",
        id_prefix="apijob",
        params_model=ServeConfig,
        stage="compute.serving.stage:run_serve_stage",
        input_models=_model_and_adapters,
        vram_gb=_serve_vram_gb,
        extra_checks=_serve_checks,
        cacheable=False,
        control_deployment=lambda config: "api/serve",
        description="An OpenAI-compatible API serving a base model and its LoRA adapters until idle.",
    )
)


# -- evaluations ---------------------------------------------------------------------------------


def _served_model_checks(config, store) -> list[str]:
    """Evaluations serve ``model`` with ``lora_adapters`` on it: the same rule as api/serve."""
    return _serve_checks(config, store)


def _inspect_input_files(config: InspectEvalConfig) -> list[InputFile]:
    ref = config.task_ref
    if ref.file and is_file_id(ref.file):
        return [InputFile("eval_name", ref.file, (ref.file.split(":", 1)[0],))]
    return []


def _inspect_checks(config: InspectEvalConfig, store) -> list[str]:
    """The task must exist (and accept task_args) before any model is served."""
    import tempfile
    from pathlib import Path

    from compute.evals.inspect_tasks import InspectTaskError, resolve_inspect_task
    from store.files import download_file

    ref = config.task_ref
    problems = _served_model_checks(config, store)
    if ref.file and not is_file_id(ref.file):
        return problems + [
            f"eval_name: {ref.file!r} is a local path; upload the task file "
            "(`ow files upload tasks.py --purpose inspect_task`) and use <file ID>@<task>"
        ]
    try:
        if ref.file:
            with tempfile.TemporaryDirectory() as directory:
                local = download_file(store, ref.file, Path(directory))
                resolve_inspect_task(
                    ref, task_args=config.task_args, local_file=local.rename(local.with_suffix(".py"))
                )
        else:
            resolve_inspect_task(ref, task_args=config.task_args)
    except InspectTaskError as exc:
        problems.append(f"eval_name: {exc}")
    return problems


INSPECT = register(
    JobSpec(
        job_type="eval-inspect",
        id_prefix="inspectjob",
        params_model=InspectEvalConfig,
        stage="compute.evals.stage:run_inspect_stage",
        input_files=_inspect_input_files,
        input_models=_model_and_adapters,
        vram_gb=_generation_vram_gb,
        extra_checks=_inspect_checks,
        control_deployment=lambda config: "eval/inspect",
        description="An inspect-ai evaluation of a model (and its LoRA adapters) served through an OpenAI-compatible API.",
    )
)


def _mmlu_input_files(config: MmluProConfig) -> list[InputFile]:
    files = [InputFile("dataset_file", config.dataset_file, ("mmlu_pro",))]
    if config.fewshot_file:
        files.append(InputFile("fewshot_file", config.fewshot_file, ("mmlu_pro",)))
    return files


MMLU_PRO = register(
    JobSpec(
        job_type="eval-mmlu-pro",
        id_prefix="mmlujob",
        params_model=MmluProConfig,
        stage="compute.evals.stage:run_mmlu_pro_stage",
        input_files=_mmlu_input_files,
        input_models=_model_and_adapters,
        vram_gb=_generation_vram_gb,
        extra_checks=_served_model_checks,
        control_deployment=lambda config: "eval/mmlu-pro",
        description="MMLU-Pro-style multiple-choice accuracy, per category and overall, of a model and its adapters.",
    )
)


MULTIPLE_CHOICE = register(
    JobSpec(
        job_type="eval-multiple-choice",
        id_prefix="mcjob",  # OpenWeights' prefix for its multiple_choice jobs
        params_model=MultipleChoiceConfig,
        stage="compute.evals.multiple_choice:run_multiple_choice_stage",
        input_files=lambda config: [InputFile("questions_file", config.questions_file, (QUESTIONS_PURPOSE,))],
        input_models=_model_and_adapters,
        vram_gb=_generation_vram_gb,
        extra_checks=_served_model_checks,
        control_deployment=lambda config: "eval/multiple-choice",
        description="Multiple-choice questions scored by log-probability (no sampling): each choice's probability, "
        "accuracy and calibration per category, of a model and its adapters.",
    )
)


# -- custom jobs ---------------------------------------------------------------------------------


def _custom_input_files(config: CustomJobConfig) -> list[InputFile]:
    files = [
        InputFile(f"mounted_files[{path!r}]", file_id, (file_id.split(":", 1)[0],))
        for path, file_id in config.mounted_files.items()
    ]
    files += [
        InputFile("params", file_id, (file_id.split(":", 1)[0],)) for file_id in config.input_file_ids()
    ]
    return files


CUSTOM = register(
    JobSpec(
        job_type="custom",
        id_prefix="customjob",
        params_model=CustomJobConfig,
        stage="compute.custom_stage:run_custom_stage",
        input_files=_custom_input_files,
        vram_gb=lambda config, model_config: config.requires_vram_gb,
        extra_checks=lambda config, store: check_params_against_schema(config),
        control_deployment=lambda config: "custom/run",
        description="A user's own script as a job: mounted files, an entrypoint, validated parameters.",
    )
)
