"""A custom job: turn a script (word_count.py) into a job with validated parameters and a content-hashed ID.

.venv/bin/python examples/custom_job/run.py
"""

import json
from pathlib import Path

from pydantic import BaseModel, Field

from client import CustomJob, OpenWeights, register

HERE = Path(__file__).resolve().parent


class WordCountParams(BaseModel):
    input_file: str = Field(description="File ID of a conversations or text JSONL file.")
    min_length: int = Field(3, ge=1, description="Only words with at least this many letters.")
    top: int = Field(5, ge=1, description="How many of the most frequent words to report.")


@register("word_count")
class WordCount(CustomJob):
    mount = {str(HERE / "word_count.py"): "word_count.py"}  # local path → path in the job's directory
    params = WordCountParams
    requires_vram_gb = 0  # no GPU needed; a GPU job states what it needs, e.g. 24

    def get_entrypoint(self, params: WordCountParams) -> list[str]:
        return ["python", "word_count.py"]


if __name__ == "__main__":
    ow = OpenWeights()
    data = ow.files.upload(HERE.parent / "data" / "train.jsonl", purpose="conversations")["id"]
    job = ow.word_count.create(input_file=data, min_length=4, top=3).wait()
    print(job.id, job.status)
    print(json.dumps(json.loads((job.download(HERE / "output") / "outputs" / "counts.json").read_text())))
    print(ow.events.latest("*", job_id=job.id))  # what the script logged with ow.run.log
