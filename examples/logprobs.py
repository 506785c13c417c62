"""Log-probabilities, as OpenWeights' `ow.logprob`: how likely a model finds each assistant turn of a file."""

import json

from tiny_model import tiny_model

from client import OpenWeights

ow = OpenWeights()

file = ow.files.upload("data/answers.jsonl", purpose="conversations")["id"]
job = ow.logprob.create(model=tiny_model(), dataset=file)  # or input_file=file; a fine-tuned model (ftjob-…) works too
job.wait()
if job.status == "completed":
    for line in ow.files.content(job.outputs["file"]).decode("utf-8").splitlines():
        row = json.loads(line)
        for turn in row["logprobs"]:  # one entry per assistant message, with every token's log-probability
            content = row["messages"][turn["message"]]["content"]
            print(json.dumps({"answer": content, "logprob": round(turn["logprob"], 3), "tokens": len(turn["tokens"])}))
