"""`gpt2-serve serve MODEL --flag value`: the flags reach the engine process and every API process,
over the GPT2_* variables, and the variables no flag names still count."""

import os
import re
import signal
import subprocess
import sys

import httpx

from tests.integration.conftest import free_port, wait_for, wait_ready


def test_flags_reach_the_engine_and_every_api_process_over_the_variables(tiny_model_dir, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GPT2_MODEL": "/nonexistent", "GPT2_PORT": "1", "GPT2_LOG_FORMAT": "json",
           "GPT2_MAX_MODEL_LEN": "512", "GPT2_SERVED_MODEL_NAME": "from-env"}
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", tiny_model_dir, "--port", str(port),
                                 "--api-servers", "2", "--max-model-len", "64", "--log-format", "text"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc)
        # the engine process loaded the argument's model with the flag's length and the variable's name
        card = httpx.get(f"{url}/v1/models").json()["data"][0]
        assert (card["root"], card["max_model_len"], card["id"]) == (tiny_model_dir, 64, "from-env")
        wait_for(lambda: log.read_text().count("Application startup complete") == 2, timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in log.read_text().splitlines() if re.match(r"\d{4}-\d\d-\d\d |\{", line)]
    # every process logged in the flag's format (text), none in the variable's (json), both API processes
    # included (each says "Started server process [its pid]")
    assert lines and not [line for line in lines if line.startswith("{")]
    started = {m.group(1) for line in lines if (m := re.search(r"Started server process \[(\d+)\]", line))}
    assert len(started) == 2
