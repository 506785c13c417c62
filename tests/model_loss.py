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


def _response_logps(model, tokenizer, prompt: list[dict], response: list[dict]):
    """(summed log-prob, token count) of the response tokens given the prompt."""
    import torch

    from compute.training.examples import IGNORE_INDEX, tokenize_conversation

    example = tokenize_conversation(tokenizer, prompt + response, responses_only=True, max_length=512)
    ids = torch.tensor([example["input_ids"]])
    labels = torch.tensor([example["labels"]])
    logits = model(input_ids=ids).logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum().item(), int(mask.sum())


def preference_losses(base_dir, rows: list[dict], adapter_dir=None, beta: float = 0.1) -> dict[str, float]:
    """Independent DPO and ORPO objectives of a model on preference rows (reference: the base model)."""
    import math

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir or base_dir)
    reference = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    policy = AutoModelForCausalLM.from_pretrained(base_dir)
    if adapter_dir is not None:
        policy = PeftModel.from_pretrained(policy, str(adapter_dir))
    policy.eval()
    dpo, orpo = [], []
    with torch.no_grad():
        for row in rows:
            chosen, chosen_n = _response_logps(policy, tokenizer, row["prompt"], row["chosen"])
            rejected, rejected_n = _response_logps(policy, tokenizer, row["prompt"], row["rejected"])
            ref_chosen, _ = _response_logps(reference, tokenizer, row["prompt"], row["chosen"])
            ref_rejected, _ = _response_logps(reference, tokenizer, row["prompt"], row["rejected"])
            margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
            dpo.append(-torch.nn.functional.logsigmoid(torch.tensor(margin)).item())

            def log_odds(total, count):
                mean = total / count
                return mean - math.log1p(-math.exp(mean))

            ratio = log_odds(chosen, chosen_n) - log_odds(rejected, rejected_n)
            orpo.append(-chosen / chosen_n - beta * torch.nn.functional.logsigmoid(torch.tensor(ratio)).item())
    return {"dpo": sum(dpo) / len(dpo), "orpo": sum(orpo) / len(orpo)}
