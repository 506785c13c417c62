"""A user's script, run as a custom job: count the words of a text file's rows.

It reads its parameters and inputs from the environment the job gives it and writes its
result into OW_OUTPUT_DIR, which becomes the job's outputs. As in OpenWeights, ow.run.log records
an event of the job's run (it needs no credential), read back with ow.events.list(job_id=...).
"""

import json
import os
from collections import Counter
from pathlib import Path

from client import OpenWeights

params = json.loads(os.environ["OW_PARAMS"])
inputs = json.loads(os.environ["OW_INPUT_FILES"])
counts: Counter[str] = Counter()
with open(inputs[params["input_file"]], encoding="utf-8") as handle:
    for line in handle:
        row = json.loads(line)
        text = row.get("text") or " ".join(str(m["content"]) for m in row.get("messages", []))
        counts.update(word for word in text.lower().split() if len(word) >= params["min_length"])
result = {"top": counts.most_common(params["top"]), "distinct": len(counts)}
Path(os.environ["OW_OUTPUT_DIR"], "counts.json").write_text(json.dumps(result, indent=2))
OpenWeights().run.log({"distinct": len(counts), "top_word": result["top"][0][0] if counts else None})
print(f"{len(counts)} distinct words of at least {params['min_length']} letters")
