"""An inspect-ai evaluation, as in OpenWeights' README: a task file uploaded to the store, run on a served model."""

from tiny_model import tiny_model

from client import OpenWeights

ow = OpenWeights()

# The task file the test suite also uses: a few sums, scored by inspect's own scorers.
task_file = ow.files.upload("../tests/data/inspect_tasks/arithmetic_tasks.py", purpose="inspect_task")["id"]
job = ow.inspect_ai.create(
    model=tiny_model(),
    eval_name=f"{task_file}@arithmetic",  # or a registry task of an installed package, e.g. "inspect_evals/gpqa_diamond"
    task_args={"count": 3},
    max_tokens=8,
    options="--top-p 0.9 --message-limit 4",  # as `inspect eval` takes them (OpenWeights' `options`), or a dict
)
job.wait()
if job.status == "completed":
    print(job.metrics["scores"])
    print(job.download("output"))
