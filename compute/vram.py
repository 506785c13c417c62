"""GPU memory estimates, used to pick the cheapest GPU type that fits a job.

Pure arithmetic over a model's ``config.json`` (never guessed from the model's name when the
config is at hand; the name is only a fallback) and the job's settings. Estimates are
deliberately a little generous: a pod that runs out of memory costs more than a bigger GPU.

Training memory = weights + trainable-parameter state (gradients and optimiser moments) +
activations (gradient checkpointing assumed, as unsloth does) + the fp32 logits of one batch +
the CUDA context, times a safety margin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

GIB = 1024**3
CUDA_CONTEXT_GB = 1.5
SAFETY_MARGIN = 1.15


@dataclass(frozen=True)
class ModelShape:
    parameters: float
    hidden_size: int
    num_layers: int
    vocab_size: int
    intermediate_size: int
    kv_width: int  # num_key_value_heads * head_dim

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        text = config.get("text_config") or config
        hidden = int(text["hidden_size"])
        layers = int(text["num_hidden_layers"])
        vocab = int(text["vocab_size"])
        intermediate = int(text.get("intermediate_size") or 4 * hidden)
        heads = int(text.get("num_attention_heads") or max(hidden // 128, 1))
        head_dim = int(text.get("head_dim") or hidden // heads)
        kv_heads = int(text.get("num_key_value_heads") or heads)
        experts = int(text.get("num_local_experts") or text.get("num_experts") or 1)
        attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
        mlp = 3 * hidden * intermediate * experts
        embeddings = vocab * hidden * (1 if text.get("tie_word_embeddings", config.get("tie_word_embeddings")) else 2)
        return cls(layers * (attention + mlp) + embeddings, hidden, layers, vocab, intermediate, kv_heads * head_dim)

    @classmethod
    def from_name(cls, name: str) -> ModelShape | None:
        """Fallback when no config is available: '7B', '0.5b', '70B' in the name."""
        match = re.search(r"(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", name)
        if not match:
            return None
        parameters = float(match.group(1)) * 1e9
        hidden = int(max(1024, min(8192, (parameters / 1e9) ** 0.5 * 1600)))
        layers = int(max(16, min(80, parameters / (12 * hidden * hidden))))
        return cls(parameters, hidden, layers, 128_256, hidden * 3, hidden // 4)


def weight_bytes_per_parameter(load_in_4bit: bool) -> float:
    # NF4 packs two weights per byte plus per-block scales (~12% extra); bf16 is two bytes.
    return 0.56 if load_in_4bit else 2.0


def lora_parameters(shape: ModelShape, rank: int, target_modules: list[str] | None) -> float:
    targets = set(target_modules or [])
    per_layer = 0
    h, i, kv = shape.hidden_size, shape.intermediate_size, shape.kv_width
    dims = {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    for name, (fan_in, fan_out) in dims.items():
        if name in targets:
            per_layer += rank * (fan_in + fan_out)
    return per_layer * shape.num_layers


def estimate_training_vram_gb_for_shape(
    shape: ModelShape,
    *,
    load_in_4bit: bool,
    is_peft: bool,
    rank: int,
    target_modules: list[str] | None,
    max_seq_length: int,
    batch_size: int,
    eight_bit_optimizer: bool,
    preference_pairs: bool = False,
) -> float:
    """GPU memory (GB, 1024³ bytes) a training run needs."""
    weights = shape.parameters * weight_bytes_per_parameter(load_in_4bit)
    trainable = lora_parameters(shape, rank, target_modules) if is_peft else shape.parameters
    # fp32 master copy is kept only for LoRA weights; grads in training dtype; Adam moments 8 or 2 bytes.
    optimiser = 2.0 if eight_bit_optimizer else 8.0
    state = trainable * (2 + optimiser + (4 if is_peft else 0))
    tokens = batch_size * max_seq_length * (2 if preference_pairs else 1)
    # Gradient checkpointing keeps one bf16 hidden state per layer boundary, and recomputes one
    # layer at a time (its attention and MLP intermediates).
    checkpoints = tokens * shape.hidden_size * shape.num_layers * 2
    layer_working_set = tokens * (shape.hidden_size * 8 + shape.intermediate_size * 3) * 2
    logits = tokens * shape.vocab_size * 4  # fp32 logits of the whole batch
    activations = checkpoints + layer_working_set
    total = (weights + state + activations + logits) / GIB + CUDA_CONTEXT_GB
    return round(total * SAFETY_MARGIN, 1)


def estimate_training_vram_gb(config, model_config: dict[str, Any] | None = None) -> float:
    """Estimate for a TrainingConfig; ``model_config`` is the base model's config.json."""
    shape = ModelShape.from_config(model_config) if model_config else ModelShape.from_name(config.model)
    if shape is None:
        return 24.0  # unknown size: ask for a common 24 GB card rather than nothing
    return estimate_training_vram_gb_for_shape(
        shape,
        load_in_4bit=config.load_in_4bit or "4bit" in config.model,
        is_peft=config.is_peft,
        rank=config.r,
        target_modules=config.target_modules,
        max_seq_length=config.max_seq_length,
        batch_size=config.per_device_train_batch_size,
        eight_bit_optimizer=config.optim == "adamw_8bit",
        preference_pairs=config.loss in ("dpo", "orpo"),
    )


def estimate_inference_vram_gb(
    model_config: dict[str, Any] | None,
    model_name: str,
    *,
    max_model_len: int,
    max_num_seqs: int = 16,
    load_in_4bit: bool = False,
) -> float:
    """Serving memory: weights plus a KV cache for ``max_num_seqs`` full-length sequences."""
    shape = ModelShape.from_config(model_config) if model_config else ModelShape.from_name(model_name)
    if shape is None:
        return 24.0
    weights = shape.parameters * weight_bytes_per_parameter(load_in_4bit)
    kv_cache = 2 * shape.num_layers * shape.kv_width * 2 * max_model_len * max_num_seqs
    total = (weights + kv_cache) / GIB + CUDA_CONTEXT_GB
    return round(total * SAFETY_MARGIN, 1)
