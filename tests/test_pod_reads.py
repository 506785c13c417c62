"""Watching many pods costs one list request per poll interval, not one request per pod."""

from __future__ import annotations

from infra.runpod.api import RunPodClient
from infra.runpod.models import PodSpec
from infra.runpod.pod_reads import PodListCache


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_many_watchers_share_one_pod_list_per_interval_and_a_newer_pod_is_read_directly(runpod_emulator):
    client = RunPodClient(runpod_emulator.api_key, runpod_emulator.url)
    pods = [
        client.create_pod(PodSpec(name=f"ow-watch-{i}", image="img", gpu_type_id="NVIDIA A40", args="sleep 60"))
        for i in range(5)
    ]
    clock = Clock()
    cache = PodListCache(client, clock=clock)

    for _ in range(3):
        assert [cache.get_pod(pod.id, max_age_s=10).name for pod in pods] == [p.name for p in pods]
        clock.now += 1
    assert len(runpod_emulator.requests_for("listPods")) == 1
    assert runpod_emulator.requests_for("getPod") == []

    newer = client.create_pod(PodSpec(name="ow-watch-new", image="img", gpu_type_id="NVIDIA A40", args="sleep 60"))
    assert cache.get_pod(newer.id, max_age_s=10).name == "ow-watch-new"  # not in the list: read directly
    client.terminate_pod(pods[0].id)
    clock.now += 11
    assert cache.get_pod(pods[0].id, max_age_s=10) is None  # listed again: gone
    assert len(runpod_emulator.requests_for("listPods")) == 2
