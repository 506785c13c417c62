"""Independent measurement used by tests: a model's mean loss on assistant tokens of a dataset."""

from __future__ import annotations

import json
from pathlib import Path


def mean_response_loss(base_dir: str | Path, rows: list[dict], adapter_dir: str | Path | None = None) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compute.training.examples import sft_examples

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    losses = []
    with torch.no_grad():
        for example in sft_examples(tokenizer, rows, responses_only=True, max_length=512):
            ids = torch.tensor([example["input_ids"]])
            labels = torch.tensor([example["labels"]])
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return sum(losses) / len(losses)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
