"""OpenWeights' API surface: ``ow.api.multi_deploy`` maps each model to an API object with ``base_url`` and
``api_key``; ``ow.chat.completions.create`` deploys a model that is not up, and retries transient errors.

The deployment tests run `api/serve` through the session's Prefect server with the official openai
client; the gathering and retry rules are checked against stand-ins first, where they are quick.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from client.api import ApiDeployment, MultiDeployment, OnDemandDeployments
from client.chat import AsyncChatCompletions, Backoff, ChatCompletions
from tests.fixtures.openai_stub import StubOpenAIServer
from tests.test_serve_flow import wait_closed

QUESTION = [{"role": "user", "content": "What is 2 plus 3?"}]
A, B = "tests/tiny-lora-a", "tests/tiny-lora-b"


# -- transient errors are retried with backoff (a real openai client, a stub server) -------------------


@pytest.fixture
def stub():
    server = StubOpenAIServer("stub", token="key")
    yield server
    server.stop()


def completions_against(server: StubOpenAIServer, async_client: bool = False):
    """Chat completions routed to ``server``, retrying quickly; counts how often the model was resolved."""
    resolved = []
    client_class = openai.AsyncOpenAI if async_client else openai.OpenAI
    client = client_class(base_url=server.base_url, api_key="key", max_retries=0)  # only our retries

    def resolve(model):
        resolved.append(model)
        return client, f"served/{model}"

    backoff = Backoff(max_tries=4, first_seconds=0.05, max_seconds=0.2)
    if async_client:
        return AsyncChatCompletions(resolve, backoff=backoff), resolved
    return ChatCompletions(resolve, backoff=backoff), resolved


def test_transient_errors_are_retried_and_each_try_resolves_the_model_again(stub):
    chat, resolved = completions_against(stub)
    stub.failures = [503, 429, 500]

    response = chat.create(model="m", messages=QUESTION)

    assert response.choices[0].message.content == "answered by stub"
    assert len(stub.requests) == 4 and resolved == ["m"] * 4
    assert stub.requests[-1]["model"] == "served/m"


def test_a_request_error_is_not_retried(stub):
    chat, _ = completions_against(stub)
    stub.failures = [400]
    with pytest.raises(openai.BadRequestError):
        chat.create(model="m", messages=QUESTION)
    assert len(stub.requests) == 1


def test_retries_are_bounded(stub):
    chat, _ = completions_against(stub)
    stub.answer_status = 503
    with pytest.raises(openai.InternalServerError):
        chat.create(model="m", messages=QUESTION)
    assert len(stub.requests) == 4


def test_the_async_client_retries_too(stub):
    chat, _ = completions_against(stub, async_client=True)
    stub.failures = [502]
    response = asyncio.run(chat.create(model="m", messages=QUESTION))
    assert response.choices[0].message.content == "answered by stub" and len(stub.requests) == 2


def test_backoff_grows_exponentially_with_full_jitter_up_to_its_cap():
    backoff = Backoff(first_seconds=1.5, max_seconds=60)
    for retry, cap in ((1, 1.5), (2, 3.0), (3, 6.0), (7, 60.0), (20, 60.0)):
        delays = [backoff.delay(retry) for _ in range(200)]
        assert all(0 <= delay <= cap for delay in delays) and max(delays) > cap / 2


# -- models asked for together are deployed together (stand-in deployments) --------------------------------


class StandInDeployment:
    ended = False
    downs = 0

    def down(self):
        self.downs += 1


class StandInMultiDeploy:
    """Records each ``multi_deploy`` call; serves every model from one stand-in deployment per call."""

    def __init__(self, fail_first: bool = False):
        self.calls: list[tuple[list[str], dict]] = []
        self.fail_first = fail_first

    def __call__(self, models, **options):
        self.calls.append((list(models), options))
        if self.fail_first and len(self.calls) == 1:
            raise RuntimeError("no capacity")
        deployment = StandInDeployment()

        class Apis(dict):
            def up(self):
                return self

            def served_name(self, model):
                return f"served/{model}"

        return Apis({model: deployment for model in models})


def test_models_asked_for_within_the_gathering_window_share_one_multi_deploy():
    multi_deploy = StandInMultiDeploy()
    on_demand = OnDemandDeployments(multi_deploy, {"idle_timeout_seconds": 60}, gather_seconds=0.3)
    with ThreadPoolExecutor(3) as pool:
        found = list(pool.map(on_demand.deployment_for, ["base", "adapter-1", "adapter-1"]))
    assert [sorted(models) for models, _ in multi_deploy.calls] == [["adapter-1", "base"]]
    assert multi_deploy.calls[0][1] == {"idle_timeout_seconds": 60}
    assert found[0][0] is found[1][0] is found[2][0] and found[1][1] == "served/adapter-1"
    assert on_demand.deployment_for("base") == found[0]  # up already: no new deployment
    assert len(multi_deploy.calls) == 1


def test_a_failed_or_ended_deployment_is_deployed_again_on_the_next_request():
    multi_deploy = StandInMultiDeploy(fail_first=True)
    on_demand = OnDemandDeployments(multi_deploy, {}, gather_seconds=0)
    with pytest.raises(RuntimeError, match="no capacity"):
        on_demand.deployment_for("m")
    first, _ = on_demand.deployment_for("m")
    first.ended = True  # e.g. stopped when idle
    second, _ = on_demand.deployment_for("m")
    assert second is not first and len(multi_deploy.calls) == 3


def test_kill_takes_the_deployment_down_and_the_next_request_deploys_again():
    multi_deploy = StandInMultiDeploy()
    on_demand = OnDemandDeployments(multi_deploy, {}, gather_seconds=0.2)
    with ThreadPoolExecutor(2) as pool:
        [(first, _), _] = pool.map(on_demand.deployment_for, ["base", "adapter"])
    on_demand.kill("adapter")
    assert first.downs == 1
    on_demand.kill("base")  # forgotten with the adapter: nothing more to take down
    assert first.downs == 1
    second, _ = on_demand.deployment_for("base")
    assert second is not first and len(multi_deploy.calls) == 2


# -- through Prefect: the real deployments ----------------------------------------------------------------


def api_runs(ow_stack) -> list:
    return ow_stack.flow_runs(flow_name="api")


def test_multi_deploy_maps_each_model_to_an_api_with_base_url_and_api_key(
    ow_stack, tiny_model_dir, tiny_lora_adapters
):
    from client import OpenWeights

    ow = OpenWeights()
    base, a, b = str(tiny_model_dir), str(tiny_lora_adapters[A]), str(tiny_lora_adapters[B])

    apis = ow.api.multi_deploy([a, b], idle_timeout_seconds=300)

    assert isinstance(apis, dict) and set(apis) == {a, b, base}  # as OpenWeights: adapters and their base
    api = apis[a]
    assert isinstance(api, ApiDeployment) and apis[b] is api and apis[base] is api  # one server per base
    assert api.base_url is None and api.api_key is None  # not up yet
    runs_before = len(api_runs(ow_stack))
    with api as client:
        assert isinstance(client, openai.OpenAI)
        plain = openai.OpenAI(base_url=api.base_url, api_key=api.api_key, max_retries=0)
        assert {model.id for model in plain.models.list()} == {base, a, b}
        replies = {
            model: plain.chat.completions.create(
                model=apis.served_name(model), messages=QUESTION, max_tokens=6, temperature=0
            )
            for model in (a, b)
        }
        assert all(reply.choices[0].message.content for reply in replies.values())
        # ow.chat routes to the open deployment: no second server
        routed = ow.chat.completions.create(model=b, messages=QUESTION, max_tokens=6, temperature=0)
        assert routed.choices[0].message.content == replies[b].choices[0].message.content
        assert len(api_runs(ow_stack)) == runs_before + 1
        url = api.base_url
    assert wait_closed(url)
    with pytest.raises(openai.APIConnectionError):
        plain.models.list()


def test_multi_deploy_as_a_context_manager_brings_every_server_up(ow_stack, tiny_model_dir):
    from client import OpenWeights

    ow = OpenWeights()
    with ow.api.multi_deploy([str(tiny_model_dir)], idle_timeout_seconds=300) as apis:
        assert isinstance(apis, MultiDeployment)
        api = apis[str(tiny_model_dir)]
        client = openai.OpenAI(base_url=api.base_url, api_key=api.api_key, max_retries=0)
        assert client.models.list().data[0].id == str(tiny_model_dir)
        url = api.base_url
    assert wait_closed(url)


def test_chat_completions_deploy_models_that_are_not_up_on_demand(
    ow_stack, tiny_model_dir, tiny_lora_adapters
):
    from client import OpenWeights

    ow = OpenWeights(deploy_kwargs={"idle_timeout_seconds": 300}, deploy_gather_seconds=1.0)
    base, a = str(tiny_model_dir), str(tiny_lora_adapters[A])
    runs_before = {run.id for run in api_runs(ow_stack)}

    def ask(model):
        return ow.chat.completions.create(model=model, messages=QUESTION, max_tokens=6, temperature=0)

    with ThreadPoolExecutor(2) as pool:  # asked for at once: one server for the base and its adapter
        replies = list(pool.map(ask, [base, a]))

    assert [reply.model for reply in replies] == [base, a]
    assert all(reply.choices[0].message.content for reply in replies)
    [control] = [run for run in api_runs(ow_stack) if run.id not in runs_before]
    assert control.parameters["idle_timeout_seconds"] == 300 and control.parameters["lora_adapters"] == [a]
    again = asyncio.run(
        ow.async_chat.completions.create(model=a, messages=QUESTION, max_tokens=6, temperature=0)
    )
    assert again.choices[0].message.content == replies[1].choices[0].message.content
    assert len(api_runs(ow_stack)) == len(runs_before) + 1  # the on-demand deployment was reused

    started = time.monotonic()
    ow.chat.completions.kill(a)
    assert time.monotonic() - started < 180
    assert ow_stack.wait(control.id, timeout=60).state.is_final()
