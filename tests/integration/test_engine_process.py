"""The engine core in its own process: supervised, and when it dies or hangs no client waits
forever, the probes turn 503 and the server exits non-zero; several API processes share it."""

import json
import os
import signal
import threading
import time

import httpx
import pytest

from app.engine.faults import Fault, inject
from tests.integration.conftest import engine_pid, free_port, spawn, start_server, wait_for, wait_ready


def stream_events(url: str, body: dict, first: threading.Event, out: list) -> None:
    """Read a stream's SSE events into `out`, setting `first` once one arrived."""
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as response:
        out.append(response.status_code)
        for line in response.iter_lines():
            if line.startswith("data: "):
                out.append(line[len("data: "):])
                first.set()


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_dead_or_hung_engine_fails_every_request_in_flight_and_turns_the_probes_503(tiny_model_dir, how):
    server = start_server(model=tiny_model_dir, step_timeout=1.0)
    try:
        engine, url = server.engine, server.url
        inject(engine, Fault(step_delay=0.02))  # keep the requests in flight
        long = {"prompt": "Go on", "max_tokens": 400, "ignore_eos": True}
        first, events, answers = threading.Event(), [], []
        streamer = threading.Thread(target=stream_events, args=(url, long, first, events))
        waiter = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/v1/completions", json=long,
                                                                           timeout=60)))
        streamer.start()
        waiter.start()
        assert first.wait(30)
        wait_for(lambda: engine.num_unfinished == 2)
        fault = time.monotonic()
        if how == "killed":
            os.kill(engine.info.pid, signal.SIGKILL)
        else:
            inject(engine, Fault(hang=60))
        wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 503, timeout=10)
        to_503 = time.monotonic() - fault
        streamer.join(30)
        waiter.join(30)
        assert not streamer.is_alive() and not waiter.is_alive(), "a client was left hanging"
        # the stream had started (200): it ends with an error event naming the cause, and no [DONE]
        error = json.loads(events[-1])["error"]
        assert events[0] == 200 and error["code"] == "engine_dead" and "[DONE]" not in events
        assert ("died" if how == "killed" else "stopped answering") in error["message"]
        assert answers[0].status_code == 503 and answers[0].json()["error"]["code"] == "engine_dead"
        assert httpx.get(f"{url}/readyz").status_code == 503
        health = httpx.get(f"{url}/healthz").json()
        assert health["status"] == "engine dead" and health["reason"]
        refused = httpx.post(f"{url}/v1/completions", json={"prompt": "x"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_dead"
        assert "gpt2_engine_up 0.0" in httpx.get(f"{url}/metrics").text
        assert engine.num_unfinished == 0
        wait_for(lambda: not engine.supervisor.process.process.is_alive())  # a hung engine is killed, not left behind
        assert to_503 < (2.0 if how == "killed" else 1.0 + 2.0)  # at once / after GPT2_STEP_TIMEOUT
    finally:
        server.stop()


def test_the_server_process_exits_non_zero_when_its_engine_dies(tiny_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn({"GPT2_MODEL": tiny_model_dir, "GPT2_PORT": str(port), "GPT2_LOG_FORMAT": "text"})
    try:
        wait_ready(url, proc)
        os.kill(engine_pid(proc.pid), signal.SIGKILL)
        assert proc.wait(30) == 1
        assert "the engine process died" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_api_processes_share_one_engine_and_drain_on_sigterm(tiny_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn({"GPT2_MODEL": tiny_model_dir, "GPT2_PORT": str(port), "GPT2_API_SERVERS": "2",
                  "GPT2_LOG_FORMAT": "text"})
    try:
        wait_ready(url, proc)
        results = []

        def complete(i: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as client:  # a connection each: both processes serve
                results.append(client.post("/v1/completions", json={"prompt": f"hello {i}", "max_tokens": 8,
                                                                       "temperature": 0}))

        threads = [threading.Thread(target=complete, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [r.status_code for r in results] == [200] * 24
        assert {r.json()["usage"]["completion_tokens"] for r in results} == {8}
        # the metrics of both API processes are summed, whichever one answers the scrape
        expected = {'gpt2_requests_total{endpoint="/v1/completions",status="200"}': 24.0, "gpt2_engine_up": 1.0,
                    "gpt2_time_to_first_token_seconds_count": 24.0}
        for _ in range(2):  # the second scrape is most likely answered by the other API process
            text = httpx.get(f"{url}/metrics").text
            samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.rsplit(" ", 1)[0] in expected}
            assert samples == expected
        workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == proc.pid]
        assert len(workers) >= 3  # the engine and two API processes (and multiprocessing's resource tracker)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert all(not os.path.exists(f"/proc/{pid}") or _parent(pid) != proc.pid for pid in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def test_a_long_step_is_not_taken_for_a_hang_but_a_hang_still_is(tiny_model_dir):
    """A slow model (every token of a step costs 6 ms): a 500-token prefill step runs ~3 s, three times
    GPT2_STEP_TIMEOUT, and is vouched for by the engine's heartbeats because small steps showed its
    speed; a small step that hangs is not, and is detected after about GPT2_STEP_TIMEOUT."""
    server = start_server(model=tiny_model_dir, step_timeout=1.0, max_num_batched_tokens=512)
    try:
        inject(server.engine, Fault(token_delay=0.006))
        http = server.http()
        assert http.post("/v1/completions", json={"prompt": "x", "max_tokens": 8}).status_code == 200
        start = time.monotonic()
        long = http.post("/v1/completions", json={"prompt": [5] * 500, "max_tokens": 2})
        assert long.status_code == 200 and server.engine.is_alive, long.text
        assert time.monotonic() - start > 2.5  # it was one long step indeed
        inject(server.engine, Fault(hang=60))
        start = time.monotonic()
        hung = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 8})
        assert hung.status_code == 503 and hung.json()["error"]["code"] == "engine_dead"
        assert time.monotonic() - start < 1.0 + 2.0, "the hang was vouched for too long"
    finally:
        server.stop()


def test_an_engine_that_dies_while_the_rest_loads_is_never_reported_ready(tiny_model_dir, monkeypatch):
    """The death listener is on from the engine's first moment: killed while the tokenizer loads,
    the app goes to `engine dead` (probes 503, requests 503 engine_dead), not to ready."""
    import asyncio

    from fastapi.testclient import TestClient

    import app.main
    from app.api.lifecycle import Phase
    from app.config import Settings

    load_tokenizer = app.main.load_tokenizer

    async def killed_meanwhile(info):
        os.kill(info.pid, signal.SIGKILL)
        await asyncio.sleep(1.0)  # the client notices the death while this waits
        return await load_tokenizer(info)

    monkeypatch.setattr(app.main, "load_tokenizer", killed_meanwhile)
    served = app.main.create_app(Settings(model=tiny_model_dir, log_format="text"))
    with TestClient(served) as client:
        lifecycle = served.state.gpt2.lifecycle
        wait_for(lambda: lifecycle.phase is not Phase.LOADING, timeout=60)
        time.sleep(1.5)  # past the tokenizer: nothing may turn it ready now
        assert lifecycle.phase is Phase.ENGINE_DEAD
        assert client.get("/readyz").status_code == 503 and client.get("/healthz").status_code == 503
        refused = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_dead"
