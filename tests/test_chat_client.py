"""Client-side chat conveniences: seeded requests are answered from cache; rate limits hold."""

import threading
import time

import pytest

from client.chat import ChatCompletions, RateLimiter, ResponseCache


class RecordingClient:
    """Stands in for the openai client's transport only: records calls, answers in the OpenAI schema."""

    def __init__(self):
        self.calls = []
        self.chat = self
        self.completions = self

    def create(self, **request):
        from openai.types.chat import ChatCompletion

        self.calls.append(request)
        return ChatCompletion.model_validate(
            {
                "id": f"c{len(self.calls)}",
                "object": "chat.completion",
                "created": 0,
                "model": request["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"answer {len(self.calls)}"}}],
            }
        )


@pytest.fixture
def completions(tmp_path):
    client = RecordingClient()
    return ChatCompletions(lambda model: (client, f"served/{model}"), cache=ResponseCache(tmp_path / "cache")), client


def test_seeded_requests_are_served_from_the_cache(completions):
    chat, client = completions
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1, "temperature": 0.7}
    first = chat.create(**request)
    second = chat.create(**request)
    assert first.choices[0].message.content == second.choices[0].message.content == "answer 1"
    assert len(client.calls) == 1
    assert client.calls[0]["model"] == "served/m"  # routed to the name the server knows


def test_a_different_seed_or_argument_is_a_different_request(completions):
    chat, client = completions
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1}
    chat.create(**base)
    chat.create(**{**base, "seed": 2})
    chat.create(**{**base, "temperature": 0.1})
    assert len(client.calls) == 3


def test_requests_without_a_seed_are_never_cached(completions):
    chat, client = completions
    for _ in range(2):
        chat.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert len(client.calls) == 2


def test_rate_limiter_spaces_request_starts():
    limiter = RateLimiter(requests_per_second=20)
    starts = []
    for _ in range(5):
        with limiter:
            starts.append(time.monotonic())
    # Start i waits for its slot, i intervals after the first start. (Two consecutive starts can be
    # closer than one interval when a loaded machine wakes the earlier one late: the slots still hold.)
    offsets = [start - starts[0] for start in starts]
    assert all(offset >= index * 0.05 - 0.002 for index, offset in enumerate(offsets)), offsets
    assert offsets[-1] < 1.0  # and it does not wait much longer than that


def test_rate_limiter_bounds_requests_in_flight():
    limiter = RateLimiter(max_concurrent=2)
    active, peak, lock = [0], [0], threading.Lock()

    def work():
        with limiter:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.05)
            with lock:
                active[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 2
