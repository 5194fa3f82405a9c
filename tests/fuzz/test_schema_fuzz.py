"""schemathesis against users_api's own OpenAPI schema, on both databases: zero failures.

Every phase runs: coverage (boundary values of each field), fuzzing (random valid and
invalid requests) and stateful (sequences that follow the schema's links: a created
user to its GET, PATCH and DELETE; a created item to those and to its processing).
Every check runs: no 5xx, only declared statuses, bodies and headers as declared,
invalid data refused, valid data accepted (tests/fuzz/schemathesis.toml lists the
exceptions and why). The seed is fixed so that a failure reproduces; ``make fuzz``
runs many more examples (FUZZ_EXAMPLES).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import USERS_API, uvicorn_server

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
SEED = int(os.environ.get("FUZZ_SEED", "1"))


@pytest.mark.slow
def test_schema_fuzz_finds_nothing(database_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": database_url, "DB_POOL_SIZE": "5", "DB_METRICS": "false"}
    with uvicorn_server(USERS_API, env, access_log=False) as server:
        result = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
                "run", f"{server.url}/openapi.json",
                "--checks", "all", "--seed", str(SEED), "--max-examples", str(EXAMPLES),
                "--phases", "coverage,fuzzing,stateful", "--workers", "1",
                "--report", "junit", "--report-dir", str(tmp_path),
                "--no-color",
            ],
            cwd=tmp_path,  # its cache (.schemathesis/) stays out of the checkout
            capture_output=True,
            text=True,
            timeout=900,
        )  # fmt: skip
        server.stop()
        log = server.log()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # Every phase ran, the stateful one included (it needs the schema's links).
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in output, output[-3000:]
    assert "Traceback" not in log, log[-3000:]
