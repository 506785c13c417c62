"""Session-wide test environment: real servers started once, on loopback, in temporary state.

The environment variables are set at import time, before any test module imports Prefect,
because Prefect reads its settings (API URL, home directory) when it is first imported.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from infra.local import stack as local_stack

SESSION_HOME = Path(tempfile.mkdtemp(prefix="ow-tests-"))
PREFECT_PORT = local_stack.free_port()

os.environ.update(
    {
        "OW_HOME": str(SESSION_HOME / "ow"),
        "PREFECT_HOME": str(SESSION_HOME / "prefect-client"),
        "PREFECT_API_URL": local_stack.api_url(PREFECT_PORT),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        # A SQLite server answers 503 when a write loses a lock race (SQLITE_BUSY_SNAPSHOT), and Prefect's
        # client retries; on two cores busy with both test processes' servers, workers and pods, five
        # retries have run out (a deployment apply in CI). Ten back off for minutes before giving up.
        "PREFECT_CLIENT_MAX_RETRIES": "10",
        # Nothing a test runs may read or write the real user's dot-files (Prefect profiles above all).
        "HOME": str(SESSION_HOME / "home"),
        "OW_PREFECT_PROFILES_PATH": str(SESSION_HOME / "home" / ".prefect" / "profiles.toml"),
    }
)
(SESSION_HOME / "home").mkdir(parents=True, exist_ok=True)

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.models",
    "tests.fixtures.stack",
    "tests.fixtures.s3",
    "tests.fixtures.jobs",
    "tests.fixtures.runpod",
    "tests.fixtures.production",
    "tests.fixtures.scheduling",
]
