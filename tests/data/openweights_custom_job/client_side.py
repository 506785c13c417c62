"""A custom job written for OpenWeights, in its cookbook's shape: a `Jobs` subclass registered under a
name, a pydantic model for its parameters, a command string as its entrypoint, and a script that logs
its result with `ow.run.log`. The tests run it with only the import lines changed."""

import json
import os
import time

from openweights import Jobs, OpenWeights, register
from pydantic import BaseModel, Field

ow = OpenWeights()


class ProductParams(BaseModel):
    x: float = Field(..., description="First factor")
    y: float = Field(..., description="Second factor")


@register("product")
class ProductJob(Jobs):
    mount = {os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_side.py"): "worker_side.py"}
    params = ProductParams
    requires_vram_gb = 0

    def get_entrypoint(self, validated_params: ProductParams) -> str:
        return f"python worker_side.py '{json.dumps(validated_params.model_dump())}'"


if __name__ == "__main__":
    job = ow.product.create(x=6, y=7)
    print(f"created {job.id}")
    while True:
        job.refresh()
        if job.status in ["completed", "failed", "canceled"]:
            break
        time.sleep(2)
    print(job.status)
    for event in ow.events.list(job_id=job.id):
        print(json.dumps(event["data"], sort_keys=True))
    print(json.dumps(ow.events.latest("*", job_id=job.id), sort_keys=True))
    print(len(ow.events.list(run_id=job.runs[-1].id)))
