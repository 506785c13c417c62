"""Batch inference, as in OpenWeights' README: completions for every row of a file."""

from tiny_model import tiny_model

from client import OpenWeights

ow = OpenWeights()

file = ow.files.create(file=open("data/prompts.jsonl", "rb"), purpose="conversations")
job = ow.inference.create(
    model=tiny_model(),
    input_file_id=file["id"],
    max_tokens=20,
    temperature=1,
    min_tokens=5,
)
job.wait()
if job.status == "completed":
    output_file_id = job["outputs"]["file"]
    output = ow.files.content(output_file_id).decode("utf-8")
    print(output)
