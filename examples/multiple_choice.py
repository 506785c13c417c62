"""A multiple-choice evaluation, as OpenWeights' `ow.multiple_choice`: each choice scored by log-probability, no sampling."""

import json
import tempfile

from tiny_model import tiny_model

from client import OpenWeights

ow = OpenWeights()

# One question per line: "choices" as strings with an "answer", or OpenWeights' {"text", "is_correct"} objects.
questions = ow.files.upload("data/multiple_choice.jsonl", purpose="multiple_choice")["id"]
job = ow.multiple_choice.create(
    model=tiny_model(),
    questions_file=questions,
    answer_template="{choice_char}",  # the scored answer; "{choice_text}" scores the choice's own words
    max_model_len=1024,
)
job.wait()
if job.status == "completed":
    print("accuracy:", json.dumps(job.metrics["scores"]))  # per model; the per-category table is an artifact
    with tempfile.TemporaryDirectory() as directory:  # every question's choices, log-probabilities and prediction
        results = job.download(directory) / "results-model-0.jsonl"
        for line in results.read_text().splitlines():
            row = json.loads(line)
            print(row["category"], row["question"], "->", row["choices"][row["predicted"]], "correct" if row["correct"] else "wrong")
