"""The one backend rule: GPU libraries only where a CUDA GPU and the library exist."""

import pytest

from compute.backend import choose_backend
from compute.training.trainers import trainer_optimizer


@pytest.mark.parametrize(
    ("workload", "cuda", "installed", "forced", "expected"),
    [
        ("training", True, {"unsloth"}, None, ("unsloth", "cuda")),
        ("training", True, set(), None, ("transformers", "cuda")),
        ("training", False, {"unsloth"}, None, ("transformers", "cpu")),
        ("training", False, set(), None, ("transformers", "cpu")),
        ("generation", True, {"vllm"}, None, ("vllm", "cuda")),
        ("generation", False, {"vllm"}, None, ("transformers", "cpu")),
        ("generation", True, {"vllm"}, "transformers", ("transformers", "cuda")),
    ],
)
def test_backend_choice(workload, cuda, installed, forced, expected):
    choice = choose_backend(workload, has_cuda=cuda, installed=installed, forced=forced)
    assert (choice.name, choice.device) == expected
    assert choice.reason


def test_forcing_a_gpu_backend_without_a_gpu_is_an_error():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        choose_backend("training", has_cuda=False, installed={"unsloth"}, forced="unsloth")
    with pytest.raises(ValueError, match="cannot run training"):
        choose_backend("training", has_cuda=True, installed={"vllm"}, forced="vllm")


@pytest.mark.parametrize(
    ("optim", "device", "name", "noted"),
    [
        ("adamw_8bit", "cuda", "adamw_8bit", False),
        ("adamw_8bit", "cpu", "adamw_torch", True),
        ("adamw", "cpu", "adamw_torch", False),
        ("adamw", "cuda", "adamw_torch_fused", False),  # the Trainer's own default on CUDA
        ("adam", "cuda", "adamw_torch_fused", True),
        ("sgd", "cpu", "sgd", False),
    ],
)
def test_optimizer_mapping_is_explicit(optim, device, name, noted):
    mapped, note = trainer_optimizer(optim, device)
    assert mapped == name
    assert (note is not None) == noted


def test_8bit_adamw_without_bitsandbytes_falls_back_with_a_reason_instead_of_failing_the_first_step():
    mapped, note = trainer_optimizer("adamw_8bit", "cuda", has_bitsandbytes=False)
    assert mapped == "adamw_torch_fused"
    assert "bitsandbytes" in note and "not installed" in note
