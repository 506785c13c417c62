"""A job cancelled in the moment its control run is being picked up stays cancelled.

Prefect's worker marks a cancelled run that has no infrastructure yet Cancelled at once ("Flow run
cancelled by worker (no infrastructure found)"); the ``threads`` worker's engine, handed the run a
moment before, then sets it Running, and Prefect accepts Cancelled → Running. Found in a clean-clone
``make test``: the client's cancelled job trained and ended completed. The states below are those of
that run, in that order; the engine is run here as the worker's thread runs it.
"""

from __future__ import annotations

from pathlib import Path

from prefect.client.schemas.objects import StateType
from pydantic import BaseModel, Field

from client.jobs import CANCELED
from tests.fixtures.jobs import register_script_job
from tests.fixtures.stack import Stack


class _WordParams(BaseModel):
    word: str = Field(min_length=1)


def test_a_control_run_cancelled_before_its_engine_started_launches_no_gpu_stage_and_ends_cancelled(
    ow_stack: Stack, tmp_path: Path
):
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.flows import load_flow_from_entrypoint
    from prefect.states import Cancelled, Cancelling, Pending

    from client import OpenWeights

    script = tmp_path / "hello.py"
    script.write_text("print('the job ran')\n")
    ow = OpenWeights()
    parameters = register_script_job("cancelled_before_running_test", script, _WordParams)(ow).definition(word="x")
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("custom/run")
        # Pending: a worker has just picked it up (and no worker picks up a Pending run again).
        run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters, state=Pending())
        client.set_flow_run_state(run.id, Cancelling(message="canceled through the client"))
        client.set_flow_run_state(run.id, Cancelled(message="Flow run cancelled by worker (no infrastructure found)."))
        handed_over = client.read_flow_run(run.id)

    state = run_flow(load_flow_from_entrypoint(deployment.entrypoint), flow_run=handed_over, return_type="state")

    assert state.is_cancelled(), (state.type, state.message)
    final = ow_stack.wait(run.id, timeout=60)
    assert final.state.type is StateType.CANCELLED, (final.state.type, final.state.message)
    job_id = ow_stack.job_id_of(final)
    assert ow_stack.gpu_stage_runs(job_id) == []  # nothing was launched: no pod, no bill
    assert ow.jobs.retrieve(job_id).status == CANCELED
