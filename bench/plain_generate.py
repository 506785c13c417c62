"""The baseline for the inference benchmark: a plain transformers batched `generate` script.

    python bench/plain_generate.py MODEL_DIR PROMPTS.jsonl '{"batch_size": 8, "max_tokens": 64}'

Renders each chat row with the tokenizer's chat template, generates in batches (left padding,
sampling at temperature 1, exactly ``max_tokens`` new tokens), counts generated tokens and
times generation only (model loading excluded). Prints one JSON line.
"""

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    model_dir, prompts_path, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in open(prompts_path) if line.strip()]
    prompts = [tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True) for row in rows]
    torch.manual_seed(0)
    generated = 0
    started = time.monotonic()
    for start in range(0, len(prompts), settings["batch_size"]):
        batch = tokenizer(prompts[start : start + settings["batch_size"]], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(
                **batch,
                max_new_tokens=settings["max_tokens"],
                min_new_tokens=settings["max_tokens"],
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                pad_token_id=tokenizer.pad_token_id,
            )
        generated += int((output[:, batch["input_ids"].shape[1] :] != tokenizer.pad_token_id).sum())
    seconds = time.monotonic() - started
    print(json.dumps({"generated_tokens": generated, "seconds": seconds, "tokens_per_second": generated / seconds}))


if __name__ == "__main__":
    main()
