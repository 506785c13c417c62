import os

import pytest

from infra import local_stack


def test_prefect_server_answers_health_check(prefect_server):
    assert local_stack.is_healthy(prefect_server)


def test_tiny_model_loads_like_a_hub_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert model.config.vocab_size == len(tokenizer)


def test_local_pools_start_the_engine_with_the_workers_interpreter(ow_stack):
    """The pools name the engine command (no workspace-supervisor process per run), and `python`
    on the workers' PATH is the interpreter this project is installed in."""
    import shutil
    import subprocess
    import sys

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for pool in (local_stack.CONTROL_POOL, local_stack.GPU_POOL):
            template = client.read_work_pool(pool).base_job_template
            assert template["variables"]["properties"]["command"]["default"] == local_stack.ENGINE_COMMAND
    env = local_stack.worker_env()
    python = shutil.which("python", path=env["PATH"])
    found = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == sys.prefix



def _processes_with(*words: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            arguments = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if all(word.encode() in arguments for word in words):
            found.append(int(entry))
    return found


def _policies(pid: int) -> set[int]:
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_the_server_and_control_worker_do_not_preempt_the_jobs_threads(prefect_server, ow_stack):
    """On one machine the server and the control worker (whose control flows inherit its policy)
    run under SCHED_BATCH, every thread of them; the GPU-stage worker, whose children are the jobs,
    keeps the normal policy."""
    port = prefect_server.rsplit(":", 1)[1].split("/")[0]
    servers = _processes_with("server", "start", port)
    control, gpu = _processes_with("worker", "test-control"), _processes_with("worker", "test-gpu")
    assert servers and control and gpu, (servers, control, gpu)
    for pid in servers + control:
        assert _policies(pid) == {os.SCHED_BATCH}, pid
    for pid in gpu:
        assert _policies(pid) == {os.SCHED_OTHER}, pid


def test_batch_scheduling_can_be_turned_off_and_a_bad_value_names_the_variable():
    assert local_stack.batch_scheduling_enabled({}) is True
    assert local_stack.batch_scheduling_enabled({"OW_BATCH_SCHEDULING": "0"}) is False
    with pytest.raises(ValueError, match="OW_BATCH_SCHEDULING must be 1 or 0"):
        local_stack.batch_scheduling_enabled({"OW_BATCH_SCHEDULING": "maybe"})
