"""Build a tiny Llama-style model and tokenizer on local disk, with no download.

Tests, the demo and the benchmarks need a real causal LM that trains and generates on a
CPU in seconds. Saving it with ``save_pretrained`` means every consumer loads it through
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` — the same
code path a hub model takes — so nothing downstream knows it is special.
"""

from __future__ import annotations

import json
from pathlib import Path

# A Llama-3-shaped chat template: the prompt of each turn is a header, the turn ends with
# <|eot_id|>. Rendering a prefix of a conversation gives a prefix of the full rendering,
# which is what response-only loss masking relies on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

MARKER = "tiny-model.json"  # present only in a complete build

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|pad|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

# Enough varied English, digits and punctuation for byte-level BPE to learn useful merges.
_WORDS = (
    "the a an of to and in is it that for on with as was at by be this from or have not are "
    "but what all were when we there can more if no out so said up one about than them into "
    "time has look two way could people my first water been call who its now find long down "
    "day did get come made may part over new sound take only little work know place year live "
    "me back give most very after thing our just name good sentence man think say great where "
    "help through much before line right too mean old any same tell boy follow came want show "
    "also around form three small set put end does another well large must big even such because "
    "turn here why ask went men read need land different home us move try kind hand picture "
    "again change off play spell air away animal house point page letter mother answer found "
    "study still learn should plus minus times equals question model train loss token adapter "
    "user assistant system hello yes please thank you number color red blue green yellow cat dog"
).split()


def training_corpus(lines: int = 400) -> list[str]:
    """Deterministic sentences (no randomness source beyond arithmetic) to train the tokenizer on."""
    corpus = []
    for i in range(lines):
        words = [_WORDS[(i * 7 + j * 13) % len(_WORDS)] for j in range(6 + i % 9)]
        sentence = " ".join(words).capitalize()
        corpus.append(f"{sentence}. {i % 10} plus {i % 7} is {i % 10 + i % 7}? {i * 3 % 101}!")
    return corpus


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer (no unknown tokens) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build_tiny_model(
    output_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny LlamaForCausalLM and its tokenizer to ``output_dir``; returns the path.

    Idempotent: an existing, complete build (config, weights and tokenizer present) is kept,
    so parallel test sessions and repeated demo runs share one copy.
    """
    import os
    import shutil
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    output_dir = Path(output_dir)
    if (output_dir / MARKER).exists():
        return output_dir
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename into place, so a concurrent reader never sees half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / MARKER).write_text(json.dumps({"hidden_size": hidden_size, "num_layers": num_layers, "seed": seed}))
    try:
        os.rename(staging, output_dir)
    except OSError:  # another process finished first (or a stale partial dir is in the way)
        if not (output_dir / MARKER).exists():
            shutil.rmtree(output_dir, ignore_errors=True)
            os.rename(staging, output_dir)
        else:
            shutil.rmtree(staging, ignore_errors=True)
    return output_dir


if __name__ == "__main__":  # pragma: no cover - convenience for humans
    import sys

    print(build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else ".ow/models/tiny-llama"))
