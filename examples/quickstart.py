"""OpenWeights' README quickstart, on Prefect: upload a conversations file, fine-tune, wait, read outputs.

Only two lines differ from OpenWeights: the import, and the model (a tiny local model here).
Run it against the embedded default (`make demo` starts it): `.venv/bin/python examples/quickstart.py`.
"""

from tiny_model import tiny_model

from client import OpenWeights  # was: from openweights import OpenWeights

ow = OpenWeights()

training_file = ow.files.upload("data/train.jsonl", purpose="conversations")["id"]
job = ow.fine_tuning.create(
    model=tiny_model(),  # was: model="unsloth/Qwen3-4B"
    training_file=training_file,
    loss="sft",
    epochs=1,
    learning_rate=1e-4,
    r=32,
)
job.wait()
print(job.id, job.status)
print("adapter:", job.outputs["adapter"])
