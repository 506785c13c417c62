"""Load a model and tokenizer for training, with the backend the machine supports.

transformers + peft everywhere; unsloth's ``FastLanguageModel`` where a CUDA GPU and unsloth
exist (see :mod:`compute.backend`). Both return a model ready for a trl trainer (LoRA applied
unless ``is_peft`` is off) and the tokenizer whose chat template training will use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from compute.backend import BackendChoice
from jobs.chat_template import chosen_chat_template
from jobs.finetune import TrainingConfig
from jobs.model_refs import ResolvedModel

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    backend: BackendChoice


def load_for_training(config: TrainingConfig, resolved: ResolvedModel, backend: BackendChoice) -> LoadedModel:
    if config.load_in_4bit and backend.device != "cuda":
        raise RuntimeError("load_in_4bit: 4-bit loading (bitsandbytes) needs a CUDA GPU; this machine has none")
    if backend.name == "unsloth":
        return _load_with_unsloth(config, resolved, backend)
    return _load_with_transformers(config, resolved, backend)


def _compute_dtype(device: str):
    import torch

    if device != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _load_with_transformers(config: TrainingConfig, resolved: ResolvedModel, backend: BackendChoice) -> LoadedModel:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = _compute_dtype(backend.device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4"
        )
    if backend.device == "cuda":
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(resolved.base_path, **kwargs)
    model = merge_parent_adapters(model, resolved)
    tokenizer = load_tokenizer(config, resolved)
    if config.is_peft:
        if config.load_in_4bit:
            model = prepare_model_for_kbit_training(model)
        # The LoRA init drawn from the job's seed (unsloth's random_state does the same): the same job
        # starts from the same weights in any process, so a recovered run's adapter is the one an
        # uninterrupted run makes, and a rerun reproduces the first.
        import torch

        torch.manual_seed(config.seed)
        model = get_peft_model(model, lora_config(config, LoraConfig))
    return LoadedModel(model, tokenizer, backend)


def _load_with_unsloth(config: TrainingConfig, resolved: ResolvedModel, backend: BackendChoice) -> LoadedModel:
    # unsloth patches transformers/trl when imported, so it must come before them.
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=resolved.base_path,
        max_seq_length=config.max_seq_length,
        load_in_4bit=config.load_in_4bit,
        dtype=None,
        full_finetuning=not config.is_peft,
    )
    model = merge_parent_adapters(model, resolved)
    tokenizer = load_tokenizer(config, resolved, fallback=tokenizer)
    if config.is_peft:
        model = FastLanguageModel.get_peft_model(
            model,
            r=config.r,
            target_modules=config.target_modules,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            bias=config.lora_bias,
            use_gradient_checkpointing="unsloth",
            random_state=config.seed,
            use_rslora=config.use_rslora,
            loftq_config=None,
        )
    return LoadedModel(model, tokenizer, backend)


def lora_config(config: TrainingConfig, lora_config_class):
    return lora_config_class(
        r=config.r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias=config.lora_bias,
        use_rslora=config.use_rslora,
        task_type="CAUSAL_LM",
    )


def merge_parent_adapters(model, resolved: ResolvedModel):
    """Bake a parent job's adapters into the weights, so a new adapter trains on top of them."""
    from peft import PeftModel

    for path in [*resolved.merge_adapter_paths, *([resolved.adapter_path] if resolved.adapter_path else [])]:
        logger.info("merging parent adapter %s into the base weights", path)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    return model


def load_tokenizer(config: TrainingConfig, resolved: ResolvedModel, fallback=None):
    """The newest tokenizer in the chain (an adapter may carry an overridden chat template)."""
    from transformers import AutoTokenizer

    source = resolved.adapter_path or resolved.base_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        if fallback is None:
            raise
        tokenizer = fallback
    if template := chosen_chat_template(config.chat_template):
        tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
