"""The transformers OpenAI-compatible server, on loopback, through the official ``openai`` client."""

import json
import secrets
import socket
import threading
import time

import httpx
import openai
import pytest

from compute.serving.lifetime import shutdown_reason
from compute.serving.server import TransformersOpenAIServer
from jobs.serve import ServeConfig

A, B = "tests/tiny-lora-a", "tests/tiny-lora-b"
QUESTION = [{"role": "user", "content": "What is 3 plus 4?"}]


@pytest.fixture(scope="module")
def api_key() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def served(tiny_model_dir, tiny_lora_adapters, api_key):
    """The tiny model under its path, and both adapters under their names."""
    config = ServeConfig(model=str(tiny_model_dir), lora_adapters=list(tiny_lora_adapters), max_model_len=2048)
    server = TransformersOpenAIServer(config, model_path=tiny_model_dir, adapter_paths=tiny_lora_adapters, api_key=api_key)
    with server:
        yield server


@pytest.fixture(scope="module")
def client(served, api_key) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.base_url, api_key=api_key, max_retries=0, timeout=60)


def greedy_chat(client, model, **extra) -> str:
    response = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=8, temperature=0, **extra)
    return response.choices[0].message.content


def test_models_lists_the_base_model_and_every_adapter(client, served, tiny_model_dir):
    models = client.models.list().data
    assert [model.id for model in models] == [str(tiny_model_dir), A, B]
    assert served.base_url == f"http://127.0.0.1:{served.port}/v1"


def test_chat_completion_from_the_base_model(client, tiny_model_dir):
    response = client.chat.completions.create(
        model=str(tiny_model_dir), messages=QUESTION, max_tokens=5, temperature=0, extra_body={"min_tokens": 5}
    )
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == str(tiny_model_dir)
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 5 and response.usage.prompt_tokens > 0


def test_each_adapter_is_served_by_name_and_changes_the_greedy_answer(client, tiny_model_dir):
    base = greedy_chat(client, str(tiny_model_dir))
    adapter_a = greedy_chat(client, A)
    adapter_b = greedy_chat(client, B)
    assert adapter_a != base
    assert adapter_b != base
    assert adapter_a != adapter_b
    # Switching adapters per request leaves no trace: the base model answers as before.
    assert greedy_chat(client, str(tiny_model_dir)) == base
    assert greedy_chat(client, A) == adapter_a


def test_adapter_answers_match_batch_generation_with_that_adapter(client, tiny_model_dir, tiny_lora_adapters):
    from compute.backend import BackendChoice
    from compute.generation.backends import load_generator
    from compute.generation.prompts import encode_chat
    from compute.generation.sampling import SamplingSettings

    generator = load_generator(
        BackendChoice("transformers", "cpu", "test"), tiny_model_dir, adapters={"b": tiny_lora_adapters[B]}
    )
    prompt = encode_chat(generator.tokenizer, QUESTION)
    expected = generator.generate([prompt], SamplingSettings(max_tokens=8, temperature=0), adapter="b")[0][0].text
    assert greedy_chat(client, B) == expected


def test_chat_stop_string_is_cut_off(client):
    free = greedy_chat(client, A)
    stop = free[3:5]
    stopped = greedy_chat(client, A, stop=[stop])
    assert stopped == free[: free.find(stop)]


def test_chat_logprobs_give_each_token_and_its_top_alternatives(client):
    response = client.chat.completions.create(
        model=B, messages=QUESTION, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2
    )
    content = response.choices[0].logprobs.content
    assert len(content) == 3
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy picks the most likely token


def test_n_choices(client):
    response = client.chat.completions.create(model=A, messages=QUESTION, max_tokens=4, n=3, seed=5)
    assert [choice.index for choice in response.choices] == [0, 1, 2]


def test_text_completions_for_several_prompts(client):
    response = client.completions.create(
        model=B, prompt=["1 plus 2 is", "3 plus 4 is"], max_tokens=4, temperature=0, n=2, logprobs=1
    )
    assert response.object == "text_completion"
    assert [choice.index for choice in response.choices] == [0, 1, 2, 3]
    assert response.choices[0].text == response.choices[1].text  # greedy: both samples of prompt 0 agree
    assert len(response.choices[0].logprobs.tokens) == len(response.choices[0].logprobs.token_logprobs) == 4
    assert response.usage.completion_tokens == 16


def test_streamed_chat_adds_up_to_the_unstreamed_answer(client):
    expected = greedy_chat(client, A)
    stream = client.chat.completions.create(
        model=A,
        messages=QUESTION,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8


def test_streamed_chat_never_sends_the_stop_string(client):
    free = greedy_chat(client, B)
    stop = free[2:4]
    stream = client.chat.completions.create(
        model=B, messages=QUESTION, max_tokens=8, temperature=0, stop=stop, stream=True
    )
    chunks = list(stream)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == free[: free.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streamed_completion_adds_up_to_the_unstreamed_one(client, tiny_model_dir):
    expected = client.completions.create(model=str(tiny_model_dir), prompt="5 plus 5 is", max_tokens=6, temperature=0)
    stream = client.completions.create(model=str(tiny_model_dir), prompt="5 plus 5 is", max_tokens=6, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(chunk.choices[0].text for chunk in chunks) == expected.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stream_is_server_sent_events_ending_with_done(served, api_key):
    body = {"model": A, "prompt": "hello", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", f"{served.base_url}/completions", json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0].removeprefix("data: "))["object"] == "text_completion"


def test_a_client_that_leaves_mid_stream_stops_its_generation(served, client, api_key):
    # ~1900 tokens take the tiny model tens of seconds on a CPU; the next request must not wait for them.
    body = {"model": A, "messages": QUESTION, "max_tokens": 1900, "min_tokens": 1900, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", f"{served.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as response:
        next(response.iter_lines())  # the stream has started: the engine is busy with it
    started = time.monotonic()
    assert greedy_chat(client, A)
    assert time.monotonic() - started < 8


def test_request_without_token_gets_401(served):
    response = httpx.post(f"{served.base_url}/chat/completions", json={"model": A, "messages": QUESTION})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_request_with_a_wrong_token_gets_401(served, api_key):
    wrong = openai.OpenAI(base_url=served.base_url, api_key=api_key + "x", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    basic = httpx.get(f"{served.base_url}/models", headers={"Authorization": f"Basic {api_key}"})
    assert basic.status_code == 401


def test_health_answers_without_a_token(served):
    assert httpx.get(f"{served.url}/health").json() == {"status": "ok"}


def test_unknown_model_gets_404_naming_the_served_models(client):
    with pytest.raises(openai.NotFoundError) as caught:
        greedy_chat(client, "no-such-model")
    assert A in str(caught.value)


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
        ({"messages": QUESTION, "max_tokens": 5000}, "maximum context length is 2048 tokens"),
        ({"messages": QUESTION, "presence_penalty": 1.0}, "presence_penalty is not supported"),
        ({"messages": QUESTION, "stream": True, "logprobs": True}, "logprobs are not available when streaming"),
        ({"messages": []}, "messages"),
        ({"messages": QUESTION, "response_format": {"type": "json_object"}}, "response_format other than"),
        ({"messages": QUESTION, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools is not supported"),
    ],
)
def test_bad_requests_get_400_naming_the_field(served, api_key, request_body, message):
    response = httpx.post(
        f"{served.base_url}/chat/completions",
        json={"model": A, **request_body},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    )
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_only_authenticated_requests_count_as_activity(served, client):
    before = served.last_activity
    time.sleep(0.05)
    httpx.get(f"{served.base_url}/models")  # 401
    httpx.get(f"{served.url}/health")
    assert served.last_activity == before
    client.models.list()
    assert served.last_activity > before
    assert served.idle_seconds() < 5
    assert served.shutdown_reason() is None


def test_a_request_in_flight_keeps_the_server_from_being_idle(served, client):
    worker = threading.Thread(
        target=client.chat.completions.create,
        kwargs={"model": A, "messages": QUESTION, "max_tokens": 400, "temperature": 0, "extra_body": {"min_tokens": 400}},
    )
    worker.start()
    deadline = time.monotonic() + 30
    while served.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert served.in_flight == 1
    far_future = time.time() + served.config.idle_timeout_seconds + 1
    assert served.idle_seconds() == 0.0
    assert served.shutdown_reason(now=far_future) is None
    worker.join()
    assert served.in_flight == 0
    assert served.shutdown_reason(now=time.time() + served.config.idle_timeout_seconds + 1) == "idle"


def test_stopping_the_server_closes_the_port(tiny_model_dir):
    server = TransformersOpenAIServer(ServeConfig(model="org/tiny"), model_path=tiny_model_dir, api_key="token").start()
    port = server.port
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    assert httpx.get(f"{server.url}/health").status_code == 200
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert not server.running


def test_messages_the_chat_template_refuses_get_400(strict_template_model_dir):
    config = ServeConfig(model="org/strict", max_model_len=256)
    with TransformersOpenAIServer(config, model_path=strict_template_model_dir, api_key="token") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="token", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="System role not supported"):
            client.chat.completions.create(model="org/strict", messages=[{"role": "system", "content": "Be brief"}], max_tokens=2)
        assert client.chat.completions.create(model="org/strict", messages=QUESTION, max_tokens=2).choices


def test_vllm_only_options_are_refused_by_the_transformers_server(tiny_model_dir):
    with pytest.raises(ValueError, match=r"quantization='fp8' is a vLLM option"):
        TransformersOpenAIServer(ServeConfig(model="org/tiny", quantization="fp8"), model_path=tiny_model_dir, api_key="t")


def test_adapter_paths_must_match_the_config(tiny_model_dir, tiny_lora_adapters):
    with pytest.raises(ValueError, match=r"no local path for 'tests/tiny-lora-b'"):
        TransformersOpenAIServer(
            ServeConfig(model="org/tiny", lora_adapters=[A, B]),
            model_path=tiny_model_dir,
            adapter_paths={A: tiny_lora_adapters[A]},
            api_key="token",
        )


LIFETIME_CASES = {
    "fresh": (100, 100, 100, None),
    "busy a while ago, within the idle timeout": (200, 100, 150, None),
    "idle for the idle timeout": (260, 100, 200, "idle"),
    "never used, idle since start": (160, 100, 100, "idle"),
    "busy but past the hard timeout": (1200, 100, 1199, "hard_timeout"),
}


@pytest.mark.parametrize(("now", "started", "active", "reason"), LIFETIME_CASES.values(), ids=LIFETIME_CASES)
def test_shutdown_reason_follows_the_idle_and_hard_timeouts(now, started, active, reason):
    assert (
        shutdown_reason(now=now, started_at=started, last_activity=active, idle_timeout_seconds=60, hard_timeout_seconds=1000)
        == reason
    )


def test_a_long_request_is_never_idle_but_still_meets_the_hard_timeout():
    timeouts = {"idle_timeout_seconds": 60, "hard_timeout_seconds": 1000}
    assert shutdown_reason(now=500, started_at=100, last_activity=110, busy=True, **timeouts) is None
    assert shutdown_reason(now=1100, started_at=100, last_activity=110, busy=True, **timeouts) == "hard_timeout"
