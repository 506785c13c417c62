"""VRAM estimates from model configs, checked against what these setups are known to need."""

import pytest

from compute.vram import (
    ModelShape,
    estimate_inference_vram_gb,
    estimate_training_vram_gb,
    estimate_training_vram_gb_for_shape,
)
from jobs.finetune import TrainingConfig

LORA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLAMA2_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32}
LLAMA3_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8}
LLAMA3_70B = {"hidden_size": 8192, "num_hidden_layers": 80, "vocab_size": 128256, "intermediate_size": 28672, "num_attention_heads": 64, "num_key_value_heads": 8}
QWEN25_05B = {"hidden_size": 896, "num_hidden_layers": 24, "vocab_size": 151936, "intermediate_size": 4864, "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True}


@pytest.mark.parametrize(
    ("config", "billions"),
    [(LLAMA2_7B, 6.74), (LLAMA3_8B, 8.03), (LLAMA3_70B, 70.55), (QWEN25_05B, 0.49)],
)
def test_parameter_count_comes_from_the_config(config, billions):
    assert ModelShape.from_config(config).parameters / 1e9 == pytest.approx(billions, abs=0.02)


@pytest.mark.parametrize(
    ("name", "config", "four_bit", "peft", "low", "high"),
    [
        ("7B 4-bit LoRA fits a 24 GB card", LLAMA2_7B, True, True, 6, 16),
        ("8B bf16 LoRA needs more than 16 GB", LLAMA3_8B, False, True, 16, 30),
        ("70B 4-bit LoRA needs a 48-80 GB card", LLAMA3_70B, True, True, 36, 80),
        ("70B bf16 full fine-tune needs several GPUs", LLAMA3_70B, False, False, 400, 2000),
        ("0.5B bf16 LoRA is small", QWEN25_05B, False, True, 2, 8),
    ],
)
def test_training_estimates_for_known_models(name, config, four_bit, peft, low, high):
    gb = estimate_training_vram_gb_for_shape(
        ModelShape.from_config(config),
        load_in_4bit=four_bit,
        is_peft=peft,
        rank=16,
        target_modules=LORA,
        max_seq_length=2048,
        batch_size=2,
        eight_bit_optimizer=True,
    )
    assert low <= gb <= high, f"{name}: {gb} GB"


def test_estimate_grows_with_sequence_length_batch_and_precision():
    shape = ModelShape.from_config(LLAMA3_8B)

    def gb(**overrides):
        args = dict(load_in_4bit=True, is_peft=True, rank=16, target_modules=LORA, max_seq_length=2048, batch_size=2, eight_bit_optimizer=True)
        return estimate_training_vram_gb_for_shape(shape, **(args | overrides))

    assert gb(max_seq_length=8192) > gb()
    assert gb(batch_size=8) > gb()
    assert gb(load_in_4bit=False) > gb()
    assert gb(preference_pairs=True) > gb()


def test_config_beats_the_name_and_the_name_is_a_fallback():
    config = TrainingConfig(model="someone/Mystery-70B-but-tiny", training_file="conversations:file-" + "a" * 64)
    from_config = estimate_training_vram_gb(config, QWEN25_05B)
    from_name = estimate_training_vram_gb(config, None)
    assert from_config < 8 < from_name


def test_inference_estimate_includes_the_kv_cache():
    short = estimate_inference_vram_gb(LLAMA3_8B, "x", max_model_len=2048)
    long = estimate_inference_vram_gb(LLAMA3_8B, "x", max_model_len=32768)
    assert 15 < short < long
