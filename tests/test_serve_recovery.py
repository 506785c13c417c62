"""An API deployment survives a lost GPU stage: the recovered attempt serves under the same token and
the same endpoint record, and a client holding the old one keeps working.

The stage function is driven directly first (a recovery is an attempt that finds the lost one's
record and Secret), then end to end: `api/serve` through Prefect, its stage process killed as a
lost pod is, Prefect's retry starting it again, and the same openai client object answering.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import openai
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from client import runs
from client.api import ApiDeployment
from compute.serving.stage import endpoint_key, run_serve_stage, token_secret_name
from compute.stage import StageContext
from jobs.serve import ServeConfig
from store.artifact_store import ArtifactStore
from tests.test_serve_flow import wait_closed

QUESTION = [{"role": "user", "content": "What is 2 plus 3?"}]
JOB_ID = "api-recovered-stage"


def ask(client, model: str) -> str:
    completion = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=6, temperature=0)
    return completion.choices[0].message.content


class Secrets(dict):
    """The Prefect Secret blocks a GPU stage writes, as a dict."""

    def context(self, store: ArtifactStore, tmp_path) -> StageContext:
        return StageContext(
            job_id=JOB_ID,
            store=store,
            work_dir=tmp_path / "work",
            cache_dir=tmp_path / "cache",
            save_secret=self.__setitem__,
            delete_secret=lambda name: self.pop(name, None),
            read_secret=self.get,
        )


def lost_attempt(store: ArtifactStore, secrets: Secrets) -> dict:
    """What a stage whose pod vanished leaves: its record still "serving" at a dead URL, its token."""
    record = {
        "job_id": JOB_ID,
        "base_url": "http://127.0.0.1:9/v1",
        "models": ["ignored"],
        "token_secret": token_secret_name(JOB_ID),
        "backend": "transformers",
        "started_at": 1000.0,
        "serving_since": 1010.0,
        "attempt": 1,
        "status": "serving",
    }
    store.write_json(endpoint_key(JOB_ID), record)
    secrets[token_secret_name(JOB_ID)] = "the-token-clients-hold"
    return record


def serve_in_background(config: ServeConfig, context: StageContext):
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = run_serve_stage(config, context)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_record(store: ArtifactStore, status: str, attempt: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.read_json(endpoint_key(JOB_ID))
        if record["status"] == status and record["attempt"] == attempt:
            return record
        time.sleep(0.1)
    raise TimeoutError(f"the endpoint record never said {status!r} for attempt {attempt}")


def test_a_recovered_attempt_keeps_the_token_and_updates_the_record_in_place(tiny_model_dir, tmp_path):
    store, secrets = ArtifactStore(str(tmp_path / "store")), Secrets()
    lost = lost_attempt(store, secrets)
    # Idle long enough for the question to arrive on a loaded machine (3 s was not, once), short
    # enough for the stage to end by its idle timeout in the test.
    config = ServeConfig(model=str(tiny_model_dir), idle_timeout_seconds=10)

    thread, outcome = serve_in_background(config, secrets.context(store, tmp_path))
    serving = wait_for_record(store, "serving", attempt=2)
    client = openai.OpenAI(base_url=serving["base_url"], api_key="the-token-clients-hold", max_retries=0)
    assert ask(client, str(tiny_model_dir))
    thread.join(120)

    assert "error" not in outcome, outcome.get("error")
    assert serving["base_url"] != lost["base_url"]
    assert serving["attempt"] == 2 and serving["recovered_at"] >= serving["started_at"] == lost["started_at"]
    assert serving["models"] == [str(tiny_model_dir)] and serving["token_secret"] == lost["token_secret"]
    stopped = store.read_json(endpoint_key(JOB_ID))
    assert stopped["status"] == "stopped" and stopped["attempt"] == 2
    assert outcome["result"].details["attempt"] == 2
    assert token_secret_name(JOB_ID) not in secrets  # ended by its idle timeout: the token goes with it


class PodStopping(BaseException):
    """Stands in for Prefect's TerminationSignal: the stage is stopped from outside."""


def test_a_stage_stopped_from_outside_leaves_its_token_for_a_recovery(tiny_model_dir, tmp_path, monkeypatch):
    from compute.serving.server import TransformersOpenAIServer

    def stopped_from_outside(self, poll_seconds=5.0):
        raise PodStopping()

    monkeypatch.setattr(TransformersOpenAIServer, "wait_until_shutdown", stopped_from_outside)
    store, secrets = ArtifactStore(str(tmp_path / "store")), Secrets()
    config = ServeConfig(model=str(tiny_model_dir))

    with pytest.raises(PodStopping):
        run_serve_stage(config, secrets.context(store, tmp_path))

    record = store.read_json(endpoint_key(JOB_ID))
    assert record["status"] == "interrupted" and record["attempt"] == 1
    token = secrets[token_secret_name(JOB_ID)]
    with pytest.raises(PodStopping):
        run_serve_stage(config, secrets.context(store, tmp_path))  # the recovery, stopped too
    assert secrets[token_secret_name(JOB_ID)] == token
    assert store.read_json(endpoint_key(JOB_ID))["attempt"] == 2


def test_a_stage_stopped_because_it_was_cancelled_deletes_its_token(tiny_model_dir, tmp_path, monkeypatch):
    """A cancellation is never recovered: nobody will use the token again, so it does not outlive the stage."""
    from dataclasses import replace

    from compute.serving.server import TransformersOpenAIServer

    def stopped_from_outside(self, poll_seconds=5.0):
        raise PodStopping()

    monkeypatch.setattr(TransformersOpenAIServer, "wait_until_shutdown", stopped_from_outside)
    store, secrets = ArtifactStore(str(tmp_path / "store")), Secrets()

    with pytest.raises(PodStopping):
        run_serve_stage(ServeConfig(model=str(tiny_model_dir)), replace(secrets.context(store, tmp_path), cancelling=lambda: True))

    assert token_secret_name(JOB_ID) not in secrets
    assert store.read_json(endpoint_key(JOB_ID))["status"] == "cancelled"


def test_the_same_openai_client_answers_after_its_deployments_stage_process_is_killed(
    ow_stack, tiny_model_dir
):
    from prefect.blocks.system import Secret

    model = str(tiny_model_dir)
    deployment = ApiDeployment(model, idle_timeout_seconds=600)
    with deployment as client:
        before = deployment.endpoint
        answer = ask(client, model)
        [stage] = runs.job_runs(before.job_id, gpu_stage=True)
        with get_client(sync_client=True) as prefect:
            pid = int(str(prefect.read_flow_run(stage.id).infrastructure_pid).rsplit(":", 1)[-1])

        os.kill(pid, signal.SIGKILL)  # the pod is lost: no cleanup, the record still says "serving"
        assert ow_stack.wait(stage.id, timeout=120).state.type == StateType.CRASHED

        assert ask(client, model) == answer  # the same client object: it waited, then followed
        after = deployment.endpoint
        assert client.api_key == after.api_key == before.api_key
        assert Secret.load(token_secret_name(before.job_id)).get() == before.api_key
        assert after.base_url != before.base_url and wait_closed(before.base_url, timeout=5)
        record = ow_stack.store.read_json(endpoint_key(before.job_id))
        assert record["status"] == "serving" and record["base_url"] == after.base_url
        assert record["attempt"] == 2 and record["recovered_at"] > record["started_at"]
        stages = sorted(runs.job_runs(before.job_id, gpu_stage=True), key=lambda run: run.created)
        assert [run.state.type for run in stages] == [StateType.CRASHED, StateType.RUNNING]
        assert "Recovering job" in ow_stack.logs(deployment.flow_run_id)
    assert wait_closed(after.base_url)
    with pytest.raises(ValueError):
        Secret.load(token_secret_name(before.job_id))  # closing the deployment deleted its token
