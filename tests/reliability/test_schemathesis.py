"""Schemathesis generates requests from /openapi.json (strings with lone surrogates and NUL, huge
integers, every field's edge values) against a real server: no 5xx (bar deadlines a request set
itself: see schemathesis_hooks.py). Bounded: a fixed number of examples per operation, one seed."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.integration.conftest import start_server

EXAMPLES = 40


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    live = start_server(model=tiny_model_dir)
    yield live
    live.stop()


def test_no_server_error_on_generated_requests(server, tmp_path):
    executable = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    assert executable, "schemathesis is a dev dependency"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.reliability.schemathesis_hooks",
           "PYTHONPATH": os.getcwd()}
    command = [executable, "run", f"{server.url}/openapi.json", "--checks", "no_server_error",
               "--max-examples", str(EXAMPLES), "--seed", "1", "--generation-database", "none",
               "--generation-codec", "unicode_escape",  # any code point: lone surrogates included
               "--generation-allow-x00", "true", "--phases", "examples,coverage,fuzzing", "--request-timeout", "60",
               "--workers", "2"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    summary = result.stdout[-3000:]
    print(summary)
    assert result.returncode == 0, summary
    assert "generated" in summary and "Tested: 10" in summary
