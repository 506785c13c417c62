"""An MMLU-Pro evaluation (eval/mmlu-pro): a model answers ten-option questions, scored per category.

The file here is a small sample in MMLU-Pro's format (question, options, answer, category per line;
rows with "split": "validation" are the few-shot examples). For the real benchmark, write
TIGER-Lab/MMLU-Pro's test and validation splits to one JSONL file the same way and upload that.
"""

import json

from tiny_model import tiny_model

from client import OpenWeights

ow = OpenWeights()

dataset = ow.files.upload("data/mmlu_pro.jsonl", purpose="mmlu_pro")["id"]
job = ow.mmlu_pro.create(
    model=tiny_model(),
    dataset_file=dataset,
    num_fewshot=1,
    chain_of_thought=False,  # answer at once; True asks for reasoning first (and more max_tokens)
    max_tokens=12,
    max_model_len=1024,
)
job.wait()
print(job.status)
if job.status == "completed":
    print("accuracy:", json.dumps(job.metrics["scores"]))  # per model; the per-category table is an artifact
