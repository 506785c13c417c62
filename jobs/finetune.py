"""Parameters of fine-tuning jobs (SFT, DPO, ORPO, weighted SFT), at parity with OpenWeights' ``TrainingConfig``.

``loss="weighted_sft"`` is OpenWeights' ``weighted_sft`` job (``ow.weighted_sft``): SFT whose
token losses are weighted by the ``weight`` of their message or content block (negative weights
push a text's likelihood down); :func:`openweights_weighted_sft_params` maps its spellings.

Field names, defaults and validation rules follow OpenWeights so a user's existing job
definitions validate unchanged; messages name the field and what would be valid. The model is
the typed edge of the ``finetune`` flow: its fields are the flow's parameters (the Prefect UI
form) and, with defaults filled in, the input of the job's content hash.
"""

from __future__ import annotations

import ast
import math
import operator
import string
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplate
from jobs.datasets import WEIGHTED_CONVERSATIONS
from jobs.environment import environ as run_environ
from jobs.file_ids import FileId
from jobs.hardware import AllowedHardware, ContainerImage, HardwareRequest, RequiredVramGb
from jobs.identity import JobIdSuffix

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# adamw_torch: OpenWeights' weighted_sft default (its other jobs refuse it)
ALLOWED_OPTIMIZERS = ("adamw_8bit", "adamw", "adam", "sgd", "adamw_torch")
ALLOWED_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)
CONVERSATION_LOSSES = ("sft",)
PREFERENCE_LOSSES = ("dpo", "orpo")
WEIGHTED_LOSSES = ("weighted_sft",)
# Weighted data validated on upload, or as OpenWeights uploads it (the job then checks the weights).
WEIGHTED_TRAINING_PURPOSES = (WEIGHTED_CONVERSATIONS, "conversations")
NAME_PLACEHOLDERS = ("org_id", "model_name", "job_id")
# The Hugging Face organisation models are named under ({org_id}) and pushed to: the env value wins
# over the Prefect variable (one setting the client, the control tier and every pod can read);
# HF_ORG and HF_USER are OpenWeights' own fallbacks. Nothing is hard-coded.
HF_ORG_ENV = "OW_HF_ORG"
HF_ORG_VARIABLE = "ow-hf-org"
HF_ORG_FALLBACK_ENVS = ("HF_ORG", "HF_USER")
MAX_LEARNING_RATE_EXPRESSION = 100  # characters: '1e-4 * 2' needs ten; a long one is an attack on the parser


class SamplingCallbackConfig(BaseModel):
    """Generate completions for a dataset's prompts during training, stored as an artifact."""

    model_config = ConfigDict(extra="forbid")

    dataset: FileId = Field(description="File ID of a conversations file whose prompts are sampled.")
    eval_steps: Literal["log"] | int = Field(10, description="Sample every N steps, or 'log' at every logging step.")
    batch_size: int = Field(8, ge=1, description="Prompts per generation batch.")
    tag: str = Field("samples", description="Name of the artifact the samples are stored under.")
    temperature: float = Field(0, ge=0, description="Sampling temperature (0 = greedy).")
    max_tokens: int = Field(600, gt=0, description="Maximum tokens generated per prompt.")

    @field_validator("eval_steps")
    @classmethod
    def _positive_steps(cls, value):
        if isinstance(value, int) and value <= 0:
            raise ValueError("Evaluation steps must be positive if specified as an integer")
        return value


class TrainingConfig(HardwareRequest):
    """A LoRA (or full) fine-tuning job."""

    model_config = ConfigDict(extra="forbid")

    # Model and data
    model: str = Field(
        description="Base model: a Hugging Face model ID, a local path, an earlier fine-tuning job's ID "
        "(ftjob-…), or an artifact URI in the store.",
    )
    training_file: FileId = Field(
        description="File ID of the training data (conversations:file-… for SFT, preference:file-… for DPO/ORPO, "
        "weighted_conversations:file-… or conversations:file-… for weighted SFT)."
    )
    test_file: FileId | None = Field(None, description="File ID of a held-out dataset evaluated during training.")
    loss: Literal["sft", "dpo", "orpo", "weighted_sft"] = Field(
        "sft",
        description="Training objective. weighted_sft: each token's loss times the weight of its message or "
        "content block, summed and divided by the sum of |weight| (OpenWeights' weighted_sft).",
    )

    # Tokenizer
    chat_template: ChatTemplate = DEFAULT_CHAT_TEMPLATE

    # Output naming
    finetuned_model_id: str = Field(
        "{org_id}/{model_name}-{job_id}",
        description="Name of the fine-tuned model (the Hub repo when pushing). Placeholders: "
        "{org_id} (the OW_HF_ORG env value or the ow-hf-org Prefect variable), {model_name}, {job_id}, "
        "any string-valued parameter of the job (e.g. {loss}), and keys of model_naming_extra_parameters.",
    )
    model_naming_extra_parameters: dict[str, str] | None = Field(
        None, description="Extra placeholder values for finetuned_model_id."
    )
    job_id_suffix: JobIdSuffix | None = Field(
        None, description="Suffix appended to the job ID (e.g. to tell runs apart): 1-64 letters, digits, '.', '_' or '-'."
    )

    # Model loading
    max_seq_length: int = Field(2048, ge=8, le=1_048_576, description="Maximum sequence length for training.")
    load_in_4bit: bool = Field(False, description="Load the base model in 4-bit (QLoRA; needs a GPU).")

    # PEFT
    is_peft: bool = Field(True, description="Train a LoRA adapter (True) or all weights (False).")
    target_modules: list[str] | None = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES), description="Modules LoRA adapts."
    )
    lora_bias: Literal["all", "none"] = Field("none", description="LoRA bias training: 'none' or 'all'.")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (scaling).")
    lora_dropout: float = Field(0.0, description="LoRA dropout rate, between 0 and 1.")
    use_rslora: bool = Field(True, description="Rank-stabilised LoRA scaling (alpha/sqrt(r)).")
    merge_before_push: bool = Field(
        True,
        description="Also store weights merged with the adapter (usable as a plain model and as the parent "
        "of further fine-tunes). Skipped with a warning for 4-bit models.",
    )
    push_to_hub: bool = Field(
        False,
        description="Also push the result to the Hugging Face Hub as finetuned_model_id (needs the hf-token secret, "
        "and the OW_HF_ORG env value or the ow-hf-org Prefect variable for {org_id}).",
    )
    push_to_private: bool = Field(True, description="Make the Hub repository private when pushing.")

    # Optimisation
    epochs: int = Field(1, ge=1, description="Number of training epochs.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps (overrides epochs).")
    per_device_train_batch_size: int = Field(2, ge=1, description="Training batch size per device.")
    gradient_accumulation_steps: int = Field(8, ge=1, description="Batches accumulated per optimiser step.")
    warmup_steps: int = Field(5, ge=0, description="Learning-rate warm-up steps.")
    # float | str so the form takes an expression; validation turns it into its float, so '2e-4',
    # '1e-4 * 2' and 2e-4 are one job (the job ID hashes the validated value).
    learning_rate: float | str = Field(
        1e-4, description="Learning rate, or an arithmetic expression such as '1e-4 * 2' (stored as its value)."
    )
    logging_steps: int = Field(1, ge=1, description="Steps between logged metrics.")
    optim: str = Field("adamw_8bit", description=f"Optimiser: one of {', '.join(ALLOWED_OPTIMIZERS)}.")
    weight_decay: float = Field(0.01, ge=0, description="Weight decay.")
    lr_scheduler_type: str = Field("linear", description=f"Scheduler: one of {', '.join(ALLOWED_SCHEDULERS)}.")
    seed: int = Field(3407, description="Random seed.")
    beta: float = Field(0.1, gt=0, description="Beta of DPO / ORPO.")
    save_steps: int = Field(5000, ge=1, description="Checkpoint to the artifact store every N steps.")
    checkpoint_interval_minutes: float = Field(
        30.0, gt=0, description="Also checkpoint when this many minutes passed since the last checkpoint."
    )
    train_on_responses_only: bool = Field(
        True,
        description="Compute the loss on assistant tokens only (SFT). weighted_sft: non-assistant text without a "
        "weight weighs 0 (else 1).",
    )
    packing: bool = Field(
        True,
        description="Pack several short examples into one sequence (SFT; OpenWeights' default since v0.11). "
        "Always off for weighted_sft, which keeps each example's token weights.",
    )

    # Evaluation and callbacks
    logp_callback_datasets: dict[str, FileId] = Field(
        default_factory=dict, description="Name → file ID of datasets whose loss/log-probability is tracked."
    )
    eval_every_n_steps: int = Field(5000, description="Evaluate logp_callback_datasets every N steps.")
    sampling_callbacks: list[SamplingCallbackConfig] | None = Field(
        None, description="Datasets whose prompts are sampled during training."
    )
    eval_batch_size: int = Field(8, ge=1, description="Evaluation batch size for test_file.")
    test_file_eval_steps: int | float | None = Field(
        None, description="How often to evaluate test_file (Trainer eval_steps)."
    )
    test_file_eval_strategy: Literal["no", "steps", "epoch"] | None = Field(
        "epoch", description="When to evaluate test_file: no, steps or epoch."
    )

    meta: dict[str, Any] | None = Field(None, description="Free-form metadata kept with the job.")

    # Where the GPU stage runs (jobs.hardware): not part of the job ID
    allowed_hardware: AllowedHardware
    requires_vram_gb: RequiredVramGb
    image: ContainerImage

    # -- validators -------------------------------------------------------------------------

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _check_learning_rate(cls, value) -> float:
        rate = evaluate_learning_rate(value)
        if not math.isfinite(rate):
            raise ValueError(f"Learning rate must be a finite number, got {rate} from {value!r}")
        if rate <= 0:
            raise ValueError("Learning rate must be positive")
        return rate

    @field_validator("lora_dropout")
    @classmethod
    def _check_dropout(cls, value: float) -> float:
        if not 0 <= value <= 1:
            raise ValueError("Dropout rate must be between 0 and 1")
        return value

    @field_validator("optim")
    @classmethod
    def _check_optimizer(cls, value: str) -> str:
        if value not in ALLOWED_OPTIMIZERS:
            raise ValueError(f"Optimizer must be one of {list(ALLOWED_OPTIMIZERS)}")
        return value

    @field_validator("lr_scheduler_type")
    @classmethod
    def _check_scheduler(cls, value: str) -> str:
        if value not in ALLOWED_SCHEDULERS:
            raise ValueError(f"Scheduler must be one of {list(ALLOWED_SCHEDULERS)}")
        return value

    @field_validator("eval_every_n_steps")
    @classmethod
    def _check_eval_steps(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("Evaluation steps must be positive if specified as an integer")
        return value

    @field_validator("finetuned_model_id")
    @classmethod
    def _check_finetuned_model_id(cls, value: str) -> str:
        template_placeholders(value)
        if len(value.split("/")) != 2:
            raise ValueError("Model ID must be in the format 'user/model'")
        org = value.split("/")[0]
        if org in ("datasets", "models", "unsloth", "None"):
            raise ValueError(f"You have set org={org}, but it must be an org you have access to")
        return value

    @model_validator(mode="after")
    def _check_files_match_loss(self) -> TrainingConfig:
        # OpenWeights' rule: the training file's purpose must fit the loss.
        purpose = self.training_file.split(":", 1)[0]
        if self.loss in CONVERSATION_LOSSES and purpose != "conversations":
            raise ValueError(
                f"training_file: loss={self.loss!r} trains on a conversations file (conversations:file-…), "
                f"got {self.training_file!r}"
            )
        if self.loss in PREFERENCE_LOSSES and purpose != "preference":
            raise ValueError(
                f"training_file: loss={self.loss!r} trains on a preference file (preference:file-…), "
                f"got {self.training_file!r}"
            )
        if self.loss in WEIGHTED_LOSSES and purpose not in WEIGHTED_TRAINING_PURPOSES:
            raise ValueError(
                f"training_file: loss={self.loss!r} trains on a weighted conversations file "
                f"(weighted_conversations:file-… or conversations:file-…), got {self.training_file!r}"
            )
        return self

    @model_validator(mode="after")
    def _no_packing_with_weights(self) -> TrainingConfig:
        if self.loss in WEIGHTED_LOSSES and self.packing:
            if "packing" in self.model_fields_set:
                raise ValueError("packing: not supported with loss='weighted_sft' (each example keeps its own token weights)")
            self.packing = False  # the default: normalised, so leaving it out and packing=False are one job
        return self

    @model_validator(mode="after")
    def _no_logprobs_with_4bit(self) -> TrainingConfig:
        if (self.load_in_4bit or "4bit" in self.model) and self.logp_callback_datasets:
            raise ValueError("logp_callback_datasets: log-probability tracking does not work for 4-bit models")
        return self

    @model_validator(mode="after")
    def _check_name_template(self) -> TrainingConfig:
        known = set(self._name_values(job_id="", org_id=""))
        for name in template_placeholders(self.finetuned_model_id):
            if name not in known:
                raise ValueError(
                    f"finetuned_model_id: unknown placeholder {{{name}}}; use {{org_id}}, {{model_name}}, "
                    "{job_id}, a string-valued parameter of the job or a key of model_naming_extra_parameters"
                )
        return self

    # -- derived values ---------------------------------------------------------------------

    @property
    def learning_rate_value(self) -> float:
        return evaluate_learning_rate(self.learning_rate)

    def output_model_name(self, job_id: str, org_id: str) -> str:
        """``finetuned_model_id`` with its placeholders filled (the template holds plain ``{name}`` fields only)."""
        return self.finetuned_model_id.format(**self._name_values(job_id, org_id))

    def _name_values(self, job_id: str, org_id: str) -> dict[str, str]:
        # OpenWeights' placeholders: every string-valued parameter, then the three names, then the extras.
        values = {
            name: value
            for name in type(self).model_fields
            if name != "finetuned_model_id" and isinstance(value := getattr(self, name), str)
        }
        values.update(org_id=org_id, model_name=self.model.rstrip("/").split("/")[-1], job_id=job_id)
        values.update(self.model_naming_extra_parameters or {})
        return values


def hf_org_setting(environ: Mapping[str, str], variable: str | None) -> str | None:
    """The Hugging Face organisation ``{org_id}`` stands for, from the env and the Prefect variable's value. Pure.

    ``OW_HF_ORG`` wins, then the ``ow-hf-org`` Prefect variable, then OpenWeights' ``HF_ORG`` and ``HF_USER``.
    """
    candidates = (environ.get(HF_ORG_ENV), variable, *(environ.get(name) for name in HF_ORG_FALLBACK_ENVS))
    return next((value.strip() for value in candidates if value and value.strip()), None)


def configured_hf_org() -> str | None:
    """The configured Hugging Face organisation (see :func:`hf_org_setting`); None when none is set."""
    variable = None
    environ = run_environ()
    if not environ.get(HF_ORG_ENV):
        try:
            from prefect.variables import Variable

            variable = Variable.get(HF_ORG_VARIABLE, default=None)
        except Exception:  # no reachable Prefect API: the env values still count
            variable = None
    return hf_org_setting(environ, variable if isinstance(variable, str) else None)


def missing_hub_org(config: BaseModel, org_id: str | None) -> str | None:
    """Why a job cannot push to the Hub (its name needs ``{org_id}`` and none is configured), or None. Pure."""
    if not getattr(config, "push_to_hub", False) or org_id:
        return None
    if "org_id" not in template_placeholders(config.finetuned_model_id):
        return None
    return (
        "finetuned_model_id: push_to_hub needs the Hugging Face organisation {org_id} stands for; "
        f"set the {HF_ORG_ENV} environment variable or the Prefect variable {HF_ORG_VARIABLE!r} "
        "(prefect variable set ow-hf-org <org>), or write the organisation into finetuned_model_id"
    )


def openweights_weighted_sft_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters of OpenWeights' ``weighted_sft.create`` as a ``finetune`` job's. Pure.

    Its ``loss`` is ``"sft"`` (the only value it takes) and means weighted SFT here;
    ``ft_id_suffix`` is appended to ``finetuned_model_id`` as OpenWeights does; ``eval_every_n_steps="log"``
    (its default spelling for "at every logging step") becomes ``logging_steps``.
    """
    params = dict(params)
    loss = params.pop("loss", "sft")
    if loss not in ("sft", *WEIGHTED_LOSSES):
        raise ValueError(f"loss: weighted_sft trains with loss='sft' (token-weighted), got {loss!r}")
    params["loss"] = "weighted_sft"
    suffix = params.pop("ft_id_suffix", None)
    if suffix is not None:
        name = params.get("finetuned_model_id", TrainingConfig.model_fields["finetuned_model_id"].default)
        params["finetuned_model_id"] = f"{name}-{suffix}"
    if params.get("eval_every_n_steps") == "log":
        params["eval_every_n_steps"] = params.get("logging_steps", TrainingConfig.model_fields["logging_steps"].default)
    return params


def template_placeholders(template: str) -> list[str]:
    """The placeholder names of a ``finetuned_model_id`` template; ValueError naming the field otherwise.

    Only plain ``{name}`` fields: ``str.format`` would also follow ``{model_name.__class__}`` (attributes),
    ``{extra[0]}`` (indexes), ``{}``/``{0}`` (positional) and pad to ``{model_name:>999999999}`` (a
    gigabyte string), none of which a model name needs.
    """
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"finetuned_model_id: {template!r} is not a valid template: {exc}") from None
    names = []
    for _, name, format_spec, conversion in fields:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(
                f"finetuned_model_id: {{{name}}} is not a placeholder; use named ones such as {{model_name}} "
                "(no positional fields, attributes or indexes)"
            )
        if format_spec or conversion:
            raise ValueError(f"finetuned_model_id: placeholders take no format spec or conversion; write {{{name}}}")
        names.append(name)
    return names


_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def evaluate_learning_rate(value: float | int | str) -> float:
    """A learning rate given as a number or a plain arithmetic expression (no names, no calls).

    OpenWeights ``eval``s the string; we parse it so a parameter can never run code.
    """
    if isinstance(value, bool):
        raise ValueError("Learning rate must be a number or an arithmetic expression")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise ValueError("Learning rate must be a number or an arithmetic expression")
    if len(value) > MAX_LEARNING_RATE_EXPRESSION:
        raise ValueError(f"Learning rate expression is longer than {MAX_LEARNING_RATE_EXPRESSION} characters")

    def evaluate(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](evaluate(node.left), evaluate(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](evaluate(node.operand))
        raise ValueError(f"Learning rate expression may only use numbers and + - * / **: {value!r}")

    try:
        return float(evaluate(ast.parse(value, mode="eval")))
    except (SyntaxError, ZeroDivisionError, OverflowError, RecursionError, MemoryError) as exc:
        raise ValueError(f"Learning rate expression {value!r} is not valid: {exc}") from None
