"""A cancellation whose SIGTERM never takes effect still stops the GPU stage, and no result is stored.

Prefect's SIGTERM handler raises ``TerminationSignal``; landing while the interpreter runs a finalizer,
the exception is printed and dropped ("Exception ignored in: <function WeakValueDictionary…>"), and the
stage used to run on to a stored result its user had cancelled (seen in a clean-clone run). Here the
fault is the cancellation without its signal: the stage's run is set to Cancelling while its work runs,
and no signal is sent. The stage runs in a process of its own, as a worker would start it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

STAGE_PROCESS = '''
import sys
from pydantic import BaseModel

from compute.stage import StageResult
from jobs.registry import JobSpec, register


class Nothing(BaseModel):
    pass


def cancelled_without_a_signal(config, context):
    """The stage's work, during which its run is cancelled and no SIGTERM arrives."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.get_id(), Cancelling(message="cancelled; signal lost"), force=True)
    return StageResult(outputs={})


register(JobSpec(job_type="lost-signal", id_prefix="lostjob", params_model=Nothing,
                 stage="__main__:cancelled_without_a_signal"))

from flows.gpu_stage import gpu_stage

gpu_stage(job_type="lost-signal", job_id=sys.argv[1], params={})
print("the stage returned")
'''


def test_a_stage_whose_run_is_cancelled_stores_no_result_even_if_the_signal_is_lost(prefect_server):
    from blocks.storage import load_artifact_store
    from store.layout import result_key

    job_id = "lostjob-" + uuid.uuid4().hex + uuid.uuid4().hex
    finished = subprocess.run(
        [sys.executable, "-c", STAGE_PROCESS, job_id],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = finished.stdout + finished.stderr
    assert "the stage returned" not in output, output[-3000:]
    assert finished.returncode != 0, output[-3000:]
    assert "this run is being cancelled: stopping before the result record is written" in output, output[-3000:]
    assert not load_artifact_store().exists(result_key(job_id))
