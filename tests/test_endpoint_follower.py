"""Clients of an API deployment follow its endpoint record across a recovery: the official openai
client, unmodified, against small HTTP servers on loopback that stand in for the lost and the
recovered server (the end-to-end recovery through Prefect is in test_serve_recovery.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from client.api import ApiDeployment, Endpoint
from client.endpoint_follower import EndpointFollower
from tests.fixtures.openai_stub import StubOpenAIServer

TOKEN = "token-of-the-deployment"
QUESTION = [{"role": "user", "content": "What is 2 plus 3?"}]


class Record:
    """An endpoint record that tests rewrite as the stage would, and the Secret its token lives in."""

    def __init__(self, base_url: str):
        self.value = {
            "job_id": "api-test",
            "base_url": base_url,
            "status": "serving",
            "token_secret": "s",
            "attempt": 1,
        }
        self.secrets = {"s": TOKEN}
        self.reads = 0

    def read(self) -> dict:
        self.reads += 1
        return dict(self.value)

    def recover_later(self, seconds: float, server: StubOpenAIServer) -> None:
        """As a recovered stage does: "recovering" at once, "serving" at the new URL after ``seconds``."""
        self.value.update(status="recovering", attempt=2)

        def serve():
            time.sleep(seconds)
            self.value.update(status="serving", base_url=server.base_url, recovered_at=time.time())

        threading.Thread(target=serve, daemon=True).start()


@pytest.fixture
def servers():
    started: list[StubOpenAIServer] = []

    def start(name: str, token: str = TOKEN) -> StubOpenAIServer:
        started.append(StubOpenAIServer(name, token))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def deployment_for(record: Record, recovery_timeout: float = 30.0, ended=lambda: None) -> ApiDeployment:
    """An ApiDeployment that is up at the record's server, following the record (no Prefect needed)."""
    deployment = ApiDeployment("org/model")
    deployment.job_id = "api-test"
    deployment.endpoint = Endpoint("api-test", record.value["base_url"], TOKEN, ["org/model"])
    deployment.follower = EndpointFollower(
        "api-test",
        record.value["base_url"],
        TOKEN,
        read_record=record.read,
        read_token=record.secrets.get,
        deployment_ended=ended,
        recovery_timeout=recovery_timeout,
        first_poll_seconds=0.1,
        max_poll_seconds=0.5,
        on_follow=lambda base_url, api_key: setattr(
            deployment, "endpoint", Endpoint("api-test", base_url, api_key, ["org/model"])
        ),
    )
    return deployment


def ask(client) -> str:
    return client.chat.completions.create(model="org/model", messages=QUESTION).choices[0].message.content


def test_the_same_client_answers_from_the_recovered_server_with_the_same_key(servers):
    lost, recovered = servers("lost"), servers("recovered")
    record = Record(lost.base_url)
    deployment = deployment_for(record)
    client = deployment.client()
    assert ask(client) == "answered by lost"

    lost.stop()
    record.recover_later(1.0, recovered)

    assert ask(client) == "answered by recovered"  # the recovered server only accepts TOKEN
    assert client.api_key == TOKEN
    assert deployment.base_url == recovered.base_url and deployment.api_key == TOKEN
    assert ask(client) == "answered by recovered"  # later requests go straight there
    assert len(recovered.requests) == 2


def test_a_proxy_error_page_is_followed_but_the_servers_own_404_is_an_answer(servers):
    lost, recovered = servers("lost"), servers("recovered")
    record = Record(lost.base_url)
    client = deployment_for(record).client()

    lost.answer_status = 404  # JSON: the server says the model does not exist
    with pytest.raises(openai.NotFoundError):
        ask(client)
    assert record.reads == 0

    lost.answer_status, lost.html = 502, True  # RunPod's proxy: the pod behind it is gone
    record.recover_later(0.5, recovered)
    assert ask(client) == "answered by recovered"


def test_a_replaced_token_is_picked_up_after_a_401(servers):
    server = servers("server", token="a-new-token")
    record = Record(server.base_url)
    record.secrets["s"] = "a-new-token"  # a recovery that could not keep the token wrote a new one
    deployment = deployment_for(record)
    assert ask(deployment.client()) == "answered by server"
    assert deployment.api_key == "a-new-token"


def test_the_async_client_follows_too(servers):
    lost, recovered = servers("lost"), servers("recovered")
    record = Record(lost.base_url)
    deployment = deployment_for(record)

    async def scenario():
        client = deployment.async_client()
        first = (
            (await client.chat.completions.create(model="org/model", messages=QUESTION))
            .choices[0]
            .message.content
        )
        lost.stop()
        record.recover_later(1.0, recovered)
        second = (
            (await client.chat.completions.create(model="org/model", messages=QUESTION))
            .choices[0]
            .message.content
        )
        return first, second

    assert asyncio.run(scenario()) == ("answered by lost", "answered by recovered")


def test_a_deployment_that_ended_fails_at_once(servers):
    lost = servers("lost")
    record = Record(lost.base_url)
    client = deployment_for(record).client().with_options(max_retries=0)
    lost.stop()
    record.value["status"] = "stopped"  # idle timeout: the deployment is over, nothing will come back

    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        ask(client)
    assert time.monotonic() - started < 5


def test_a_control_flow_that_ended_stops_the_wait(servers):
    lost = servers("lost")
    record = Record(lost.base_url)  # still "serving" at the lost URL: the pod vanished without a word
    client = deployment_for(record, ended=lambda: "its control flow run ended Crashed").client()
    lost.stop()

    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        ask(client.with_options(max_retries=0))
    assert time.monotonic() - started < 5


def test_the_wait_for_a_recovery_is_bounded(servers):
    lost = servers("lost")
    record = Record(lost.base_url)
    client = deployment_for(record, recovery_timeout=1.5).client().with_options(max_retries=0)
    lost.stop()

    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        ask(client)
    assert 1.5 <= time.monotonic() - started < 10


def test_requests_in_flight_together_wait_for_one_recovery_together(servers):
    lost, recovered = servers("lost"), servers("recovered")
    record = Record(lost.base_url)
    client = deployment_for(record).client()
    lost.stop()
    record.recover_later(1.0, recovered)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: ask(client), range(4)))

    assert answers == ["answered by recovered"] * 4


def test_requests_queued_behind_a_wait_that_gave_up_do_not_wait_again(servers):
    lost = servers("lost")
    record = Record(lost.base_url)
    client = deployment_for(record, recovery_timeout=1.5).client().with_options(max_retries=0)
    lost.stop()

    def fails(_):
        with pytest.raises(openai.APIConnectionError):
            ask(client)

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(fails, range(4)))
    assert time.monotonic() - started < 1.5 * 2.5  # one wait, not four in a row
