"""Checkpoints in the store: only complete ones are used, old ones are pruned."""

import pytest

from compute.training.checkpoints import COMPLETE_MARKER, CheckpointStore
from store.artifact_store import ArtifactStore


@pytest.fixture
def checkpoints(tmp_path):
    return CheckpointStore(ArtifactStore(tmp_path / "store"), "jobs/ftjob-x", keep=2)


def local_checkpoint(tmp_path, step):
    directory = tmp_path / f"local-{step}"
    directory.mkdir()
    (directory / "adapter_model.safetensors").write_bytes(b"w" * step)
    (directory / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    return directory


def test_a_partly_written_checkpoint_is_never_taken_as_complete(checkpoints, tmp_path):
    checkpoints.save(local_checkpoint(tmp_path, 5), 5)
    # A pod died while uploading step 10: files present, marker absent.
    checkpoints.store.put_file(local_checkpoint(tmp_path, 10) / "adapter_model.safetensors", f"{checkpoints.key(10)}/adapter_model.safetensors")
    assert checkpoints.steps() == [(5, True), (10, False)]
    assert checkpoints.latest_complete() == 5


def test_resume_downloads_the_newest_complete_checkpoint_without_its_marker(checkpoints, tmp_path):
    checkpoints.save(local_checkpoint(tmp_path, 5), 5)
    checkpoints.save(local_checkpoint(tmp_path, 10), 10)
    local = checkpoints.download(checkpoints.latest_complete(), tmp_path / "resume")
    assert local.name == "checkpoint-10"
    assert (local / "adapter_model.safetensors").read_bytes() == b"w" * 10
    assert not (local / COMPLETE_MARKER).exists()


def test_old_and_incomplete_checkpoints_are_pruned_after_a_save(checkpoints, tmp_path):
    for step in (5, 10):
        checkpoints.save(local_checkpoint(tmp_path, step), step)
    checkpoints.store.put_file(local_checkpoint(tmp_path, 12) / "trainer_state.json", f"{checkpoints.key(12)}/trainer_state.json")
    checkpoints.save(local_checkpoint(tmp_path, 15), 15)
    assert checkpoints.steps() == [(10, True), (15, True)]


def test_no_checkpoint_means_a_fresh_start(checkpoints):
    assert checkpoints.latest_complete() is None
