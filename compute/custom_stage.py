"""The GPU-stage function of custom jobs: lay out the mounted files, run the entrypoint, keep the outputs.

The script runs in its own directory holding the mounted files, with:

- ``OW_JOB_ID``: the job's ID;
- ``OW_PARAMS``: the validated parameters as JSON;
- ``OW_INPUT_FILES``: JSON mapping each file ID in the parameters to a local copy;
- ``OW_OUTPUT_DIR``: a directory whose content is stored as the job's outputs when the script succeeds.

Its stdout and stderr become the job's log. A non-zero exit fails the job with the last lines of
its output; nothing it wrote is stored then (outputs of a failed run are not results).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque

from compute.stage import StageContext, StageResult
from jobs.custom import CustomJobConfig

TAIL_LINES = 30


def run_custom_stage(config: CustomJobConfig, context: StageContext) -> StageResult:
    job_dir = context.work_dir / "job"
    output_dir = job_dir / "outputs"
    output_dir.mkdir(parents=True, exist_ok=True)
    for target, file_id in config.mounted_files.items():
        destination = job_dir / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(context.local_file(file_id).read_bytes())
    inputs = {file_id: str(context.local_file(file_id)) for file_id in config.input_file_ids()}
    env = {
        **os.environ,
        "OW_JOB_ID": context.job_id,
        "OW_PARAMS": json.dumps(config.params),
        "OW_INPUT_FILES": json.dumps(inputs),
        "OW_OUTPUT_DIR": str(output_dir),
    }
    command = [sys.executable if config.entrypoint[0] in ("python", "python3") else config.entrypoint[0], *config.entrypoint[1:]]
    context.reporter.log(f"running {command[0] if command[0] != sys.executable else 'python'} {' '.join(command[1:])} in {job_dir}")
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(command, cwd=job_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            tail.append(line.rstrip("\n"))
            context.reporter.log(line.rstrip("\n"))
        code = process.wait()
    if code != 0:
        raise RuntimeError(f"{config.name}: the entrypoint exited with code {code}; last output:\n" + "\n".join(tail))
    files = sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*") if p.is_file())
    outputs = {"outputs": context.store.upload_tree(output_dir, f"{context.job_prefix}/outputs")} if files else {}
    return StageResult(outputs=outputs, metrics={"output_files": len(files)}, details={"files": files, "exit_code": code})
