"""An OpenAI-compatible API deployment, as in OpenWeights' README, plus the official openai client."""

from tiny_model import tiny_model

from client import OpenWeights

ow = OpenWeights()

model = tiny_model()

with ow.api.deploy(model, idle_timeout_seconds=300) as client:  # async with ow.api.deploy(model) also works
    completion = ow.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 2 plus 3?"}], max_tokens=10)
    print(completion.choices[0].message)
    # The context manager also yields a plain openai.OpenAI client pointed at the deployment.
    print([m.id for m in client.models.list()])
# Leaving the block takes the deployment (and its pod) down.
