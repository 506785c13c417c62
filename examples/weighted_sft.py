"""Token-weighted SFT, as OpenWeights' `ow.weighted_sft`: each block of text trains with its own weight.

In data/weighted_train.jsonl every assistant turn has two blocks: the right sum (weight 1, its
likelihood goes up) and a wrong hedge (weight -0.5, its likelihood goes down). The loss is
Σ weight·token loss / Σ |weight| (compute/training/weighted.py), so it can go below zero.
Run it against the embedded default (`make demo` starts it): `.venv/bin/python examples/weighted_sft.py`.
"""

from tiny_model import tiny_model

from client import OpenWeights

ow = OpenWeights()

# "weighted_conversations" checks every weight on upload; OpenWeights' "conversations" works too
# (the weights are then checked when the job is submitted).
training_file = ow.files.upload("data/weighted_train.jsonl", purpose="weighted_conversations")["id"]
job = ow.weighted_sft.create(
    model=tiny_model(),  # e.g. "unsloth/Qwen3-4B" on a GPU work pool
    training_file=training_file,
    loss="sft",  # OpenWeights' spelling; the job's loss is weighted_sft
    epochs=2,
    learning_rate=1e-3,
    r=8,
    optim="adamw_torch",
    logp_callback_datasets={"train": training_file},
    eval_every_n_steps="log",
)
job.wait()
print(job.id, job.status)
print("adapter:", job.outputs["adapter"])
print("final weighted loss:", job.metrics["final_loss"])
