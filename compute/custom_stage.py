"""The GPU-stage function of custom jobs: lay out the mounted files, run the entrypoint, keep the outputs.

The script runs in its own directory holding the mounted files, with:

- ``OW_JOB_ID``: the job's ID;
- ``OW_PARAMS``: the validated parameters as JSON;
- ``OW_INPUT_FILES``: JSON mapping each file ID in the parameters to a local copy;
- ``OW_OUTPUT_DIR``: a directory whose content is stored as the job's outputs when the script succeeds;
- ``OW_RUN_EVENTS``: the file ``ow.run.log({...})`` appends the run's events to; the stage reports
  them (:mod:`compute.run_events`) as the script prints, and once more when it ends, failed or not.

Its stdout and stderr become the job's log. A non-zero exit fails the job with the last lines of
its output; nothing it wrote is stored then (outputs of a failed run are not results).

The script is the user's code, so it does not inherit the stage's environment, which holds what
reaches the Prefect API (and through it every block: store keys, secrets), a RunPod key on a
pod, cloud keys and tokens. It gets :func:`script_environment`: the variables above, what finds
programs, libraries and GPUs, locale and cache locations, and nothing that names a credential.
A token reaches it only when the job type declares the secret (``JobSpec.secrets``, e.g.
``hf-token`` as ``HF_TOKEN``). See docs/security.md for what this does not stop.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from compute.run_events import RUN_EVENTS_ENV, RunEventForwarder
from compute.stage import StageContext, StageResult
from jobs.custom import CustomJobConfig

TAIL_LINES = 30
# What a script may inherit from the stage's environment: finding programs, libraries and GPUs,
# locale, temporary and cache directories, and library switches that hold no credential.
INHERITED_VARIABLES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ",
        "TMPDIR", "TEMP", "TMP", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "PYTHONUNBUFFERED", "PYTHONIOENCODING",
        "XDG_CACHE_HOME", "TORCH_HOME", "HUGGINGFACE_HUB_CACHE", "TOKENIZERS_PARALLELISM",
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF",
    }
)  # fmt: skip
INHERITED_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "HF_", "TRANSFORMERS_")
# Never inherited, whatever the lists above say: a name with one of these words holds a credential
# (HF_TOKEN, AWS_SECRET_ACCESS_KEY, PREFECT_API_KEY, …).
CREDENTIAL_NAME = re.compile(r"(^|_)(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH)(_|$)")
# Secrets a job type declares (JobSpec.secrets) and the variable a script finds each under.
SECRET_VARIABLES = {"hf-token": "HF_TOKEN"}


def run_custom_stage(config: CustomJobConfig, context: StageContext) -> StageResult:
    job_dir = context.work_dir / "job"
    output_dir = job_dir / "outputs"
    output_dir.mkdir(parents=True, exist_ok=True)
    for target, file_id in config.mounted_files.items():
        destination = job_dir / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(context.local_file(file_id).read_bytes())
    inputs = {file_id: str(context.local_file(file_id)) for file_id in config.input_file_ids()}
    env = script_environment(
        os.environ,
        config,
        job_id=context.job_id,
        inputs=inputs,
        output_dir=output_dir,
        secrets=context.secrets,
    )
    # Outside the job's directory: the events are the run's, not one of its outputs.
    env[RUN_EVENTS_ENV] = str(context.work_dir / "run-events.jsonl")
    events = RunEventForwarder(Path(env[RUN_EVENTS_ENV]), context.reporter)
    command = [
        sys.executable if config.entrypoint[0] in ("python", "python3") else config.entrypoint[0],
        *config.entrypoint[1:],
    ]
    context.reporter.log(
        f"running {command[0] if command[0] != sys.executable else 'python'} {' '.join(command[1:])} in {job_dir}"
    )
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        with subprocess.Popen(
            command, cwd=job_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process:
            for line in process.stdout:
                tail.append(line.rstrip("\n"))
                context.reporter.log(line.rstrip("\n"))
                events.poll()
            code = process.wait()
    finally:
        events.close()
    if code != 0:
        raise RuntimeError(
            f"{config.name}: the entrypoint exited with code {code}; last output:\n" + "\n".join(tail)
        )
    files = sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*") if p.is_file())
    outputs = (
        {"outputs": context.store.upload_tree(output_dir, f"{context.job_prefix}/outputs")} if files else {}
    )
    return StageResult(
        outputs=outputs, metrics={"output_files": len(files)}, details={"files": files, "exit_code": code}
    )


def script_environment(
    inherited: Mapping[str, str],
    config: CustomJobConfig,
    *,
    job_id: str,
    inputs: Mapping[str, str],
    output_dir: Path,
    secrets: Mapping[str, str],
) -> dict[str, str]:
    """The environment a custom job's script runs with: ``inherited`` (the stage's) cut down to
    :data:`INHERITED_VARIABLES` and :data:`INHERITED_PREFIXES` without credential names, the job's
    ``OW_*`` contract, and the declared ``secrets`` under their :data:`SECRET_VARIABLES` names."""
    env = {
        name: value
        for name, value in inherited.items()
        if (name in INHERITED_VARIABLES or name.startswith(INHERITED_PREFIXES))
        and not CREDENTIAL_NAME.search(name)
    }
    env.update(
        {
            "OW_JOB_ID": job_id,
            "OW_PARAMS": json.dumps(config.params),
            "OW_INPUT_FILES": json.dumps(dict(inputs)),
            "OW_OUTPUT_DIR": str(output_dir),
        }
    )
    env.update({SECRET_VARIABLES[name]: value for name, value in secrets.items() if name in SECRET_VARIABLES})
    return env
