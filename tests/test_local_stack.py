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


def test_the_embedded_server_runs_at_a_lower_priority_than_the_jobs(prefect_server):
    """On one machine the server's bookkeeping must not preempt a training step's threads."""
    import os

    import psutil

    port = prefect_server.rsplit(":", 1)[1].split("/")[0]
    servers = [
        process
        for process in psutil.process_iter(["cmdline"])
        if "server" in (process.info["cmdline"] or []) and port in (process.info["cmdline"] or [])
    ]
    assert servers, f"no prefect server process on port {port}"
    assert {server.nice() for server in servers} == {os.nice(0) + local_stack.SERVER_NICENESS}


def test_a_bad_server_niceness_names_the_variable():
    import pytest

    assert local_stack.server_niceness({"OW_SERVER_NICE": "0"}) == 0
    for bad in ("high", "20", "-1"):
        with pytest.raises(ValueError, match="OW_SERVER_NICE must be an integer from 0 to 19"):
            local_stack.server_niceness({"OW_SERVER_NICE": bad})
