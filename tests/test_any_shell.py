"""The embedded default reachable from any shell: once `make start` (or `make demo`) has run, a new
terminal — no PREFECT_* or OW_* variables — reaches the local server through the Prefect profile
``ow-local``; with no server there, `ow` says which URL it tried in one line and starts nothing."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.local import stack as local_stack
from tests.fixtures.jobs import FAST_SFT

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_HINT = "start the embedded default with `make demo` or `python scripts/services.py start`, or set PREFECT_API_URL"


def new_terminal(home: Path) -> dict[str, str]:
    """The environment of a new terminal of a user whose home is ``home``: nothing the Makefile exports."""
    return {
        "PATH": os.pathsep.join([str(BIN), "/usr/bin", "/bin"]),
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }


def timed(run: Callable[[], subprocess.CompletedProcess]) -> tuple[subprocess.CompletedProcess, float, float]:
    """``run()`` with its wall-clock seconds and the CPU seconds of the process it ran (load-independent)."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    completed = run()
    wall = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return completed, wall, cpu


# `ow` answers in about a second of its own work; the wall-clock bound only rules out waiting on a
# temporary server or a long timeout, as the test machine may be busy with other tests.
OW_CPU_SECONDS = 3.0
OW_CPU_PER_PREFECT_CPU = 1.5  # `ow ls` against `prefect flow-run ls` run just before (about 0.9 here)
OW_WALL_SECONDS = 8.0


@dataclass
class EmbeddedDefault:
    home: Path  # the user's home directory: ~/.prefect/profiles.toml is the one a new terminal reads
    api_url: str
    make_env: dict[str, str]
    started: str

    def run(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``command`` in a new terminal."""
        return subprocess.run(
            command, env=new_terminal(self.home), capture_output=True, text=True, timeout=timeout
        )

    def make(self, target: str) -> subprocess.CompletedProcess:
        # -o: never reinstall the virtual environment from a test, whatever the stamp's age.
        return subprocess.run(
            ["make", "-s", "-C", str(ROOT), "-o", ".venv/.installed", target],
            env=self.make_env,
            capture_output=True,
            text=True,
            timeout=600,
        )


@pytest.fixture(scope="module")
def embedded_default(tmp_path_factory) -> Iterator[EmbeddedDefault]:
    """`make start` as a user runs it (their own HOME, a free port), stopped with `make stop`."""
    home = tmp_path_factory.mktemp("user-home")
    port = local_stack.free_port()
    make_env = {
        **new_terminal(home),
        "OW_HOME": str(tmp_path_factory.mktemp("ow")),
        "OW_PREFECT_PORT": str(port),
    }
    stack = EmbeddedDefault(home=home, api_url=local_stack.api_url(port), make_env=make_env, started="")
    started = stack.make("start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        stack.started = started.stdout
        yield stack
    finally:
        stack.make("stop")


def test_make_start_activates_the_ow_local_profile_in_the_users_prefect_home(embedded_default):
    profiles = tomllib.loads((embedded_default.home / ".prefect" / "profiles.toml").read_text())
    assert profiles["active"] == "ow-local"
    assert profiles["profiles"]["ow-local"] == {
        "PREFECT_API_URL": embedded_default.api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
    }
    assert "Prefect profile ow-local is active" in embedded_default.started
    assert "prefect profile use ephemeral" in embedded_default.started


def test_a_new_terminal_fine_tunes_with_prefect_and_lists_the_job_with_ow(
    embedded_default, tiny_model_dir, conversations_path
):
    upload = embedded_default.run(
        "ow", "files", "upload", str(conversations_path), "--purpose", "conversations"
    )
    assert upload.returncode == 0, upload.stderr
    file_id = upload.stdout.strip().splitlines()[-1]

    params = {"model": str(tiny_model_dir), "training_file": file_id, **FAST_SFT}
    command = ["prefect", "deployment", "run", "finetune/sft", "--flow-run-name", "new-terminal", "--watch"]
    for key, value in params.items():
        command += ["--param", f"{key}={value}"]
    finetune = embedded_default.run(*command, timeout=900)
    output = finetune.stdout + finetune.stderr
    assert finetune.returncode == 0, output[-3000:]
    assert "Completed" in output and "temporary server" not in output

    runs, _, prefect_cpu = timed(lambda: embedded_default.run("prefect", "flow-run", "ls"))
    assert runs.returncode == 0 and "new-terminal" in runs.stdout, runs.stdout + runs.stderr

    listing, wall, cpu = timed(lambda: embedded_default.run("ow", "ls"))
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()
    assert rows[0].split()[:3] == ["JOB", "ID", "TYPE"] and "completed" in rows[1], listing.stdout
    # As quick as Prefect's own listing: on a machine where `prefect flow-run ls` is slow (a loaded CI
    # host steals CPU time too), `ow ls` may be as slow, in proportion.
    cpu_bound = max(OW_CPU_SECONDS, OW_CPU_PER_PREFECT_CPU * prefect_cpu)
    assert cpu < cpu_bound and wall < OW_WALL_SECONDS, (
        f"`ow ls` took {wall:.1f} s ({cpu:.1f} s CPU; `prefect flow-run ls` {prefect_cpu:.1f} s CPU)"
    )


def test_with_the_server_stopped_ow_names_the_url_it_tried_in_one_line(embedded_default):
    stopped = embedded_default.make("stop")
    assert "stopped server" in stopped.stdout, stopped.stdout + stopped.stderr
    listing, wall, cpu = timed(lambda: embedded_default.run("ow", "ls"))
    assert listing.returncode == 1
    assert listing.stderr == f"ow: no Prefect server at {embedded_default.api_url} ({START_HINT})\n"
    assert listing.stdout == ""
    assert cpu < OW_CPU_SECONDS and wall < OW_WALL_SECONDS, (
        f"`ow ls` took {wall:.1f} s ({cpu:.1f} s CPU) to give up"
    )


def test_with_no_server_configured_ow_starts_no_temporary_one(tmp_path):
    """Prefect's own default profile allows a temporary server; `ow` refuses it, in one line."""
    listing = subprocess.run(
        ["ow", "ls"], env=new_terminal(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 1
    assert listing.stderr == f"ow: no Prefect server configured: PREFECT_API_URL is not set ({START_HINT})\n"
    assert not (tmp_path / ".prefect" / "prefect.db").exists()
    help_text = subprocess.run(["ow", "--help"], env=new_terminal(tmp_path), capture_output=True, timeout=60)
    assert help_text.returncode == 0


def test_activating_ow_local_keeps_the_users_profiles_and_names_the_one_to_switch_back_to(tmp_path):
    profiles_path = tmp_path / "profiles.toml"
    profiles_path.write_text(
        'active = "mine"\n\n[profiles.mine]\nPREFECT_API_URL = "https://example.test/api"\n'
    )
    written, previous = local_stack.activate_local_profile("http://127.0.0.1:4321/api", profiles_path)
    assert (written, previous) == (profiles_path, "mine")
    profiles = tomllib.loads(profiles_path.read_text())
    assert profiles["active"] == "ow-local"
    assert profiles["profiles"]["mine"] == {"PREFECT_API_URL": "https://example.test/api"}
    assert profiles["profiles"]["ow-local"]["PREFECT_API_URL"] == "http://127.0.0.1:4321/api"
    # Started again (another port): the profile follows, and switching back still means Prefect's default.
    assert local_stack.activate_local_profile("http://127.0.0.1:4322/api", profiles_path)[1] == "ephemeral"
    assert tomllib.loads(profiles_path.read_text())["profiles"]["ow-local"]["PREFECT_API_URL"].endswith(
        ":4322/api"
    )
