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

