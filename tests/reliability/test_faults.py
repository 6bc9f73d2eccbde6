"""Faults heal or end cleanly: a failing step, deadlines, slow clients, SIGTERM while loading,
keys that fail closed, per-key limits, and 500s that still carry their request id. (A dead or
hung engine process: tests/integration/test_engine_process.py.)"""

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time

import httpx
import pytest

from app.config import Settings
from app.engine.faults import Fault, inject
from app.main import create_app
from tests.integration.conftest import descendants, free_port, spawn, start_server, wait_for

LONG = {"prompt": "Go on", "max_tokens": 400, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    live = start_server(model=tiny_model_dir, request_timeout=30, read_timeout=1.0, key_concurrency=1,
                        api_keys="alpha,beta")
    yield live
    live.stop()


def keyed(live, key: str = "alpha") -> httpx.Client:
    return live.http(headers={"Authorization": f"Bearer {key}"})


def assert_idle(live) -> None:
    """Nothing left anywhere: the engine client's streams, requests in flight, per-key counts, the engine."""
    wait_for(lambda: live.engine.num_unfinished == 0 and live.state.lifecycle.in_flight == 0)
    assert live.state.shares.counts.sum() == 0  # sequences and requests counted for admission, per key
    wait_for(lambda: live.engine.last_stats is None or live.engine.last_stats.num_running
             == live.engine.last_stats.num_waiting == 0)


def test_a_failing_step_fails_its_requests_with_500_and_the_server_goes_on(server):
    with keyed(server) as http:
        inject(server.engine, Fault(failing_steps=1))
        failed = http.post("/v1/completions", json={"prompt": "doomed", "max_tokens": 4})
        ok = http.post("/v1/completions", json={"prompt": "fine", "max_tokens": 4})
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "engine_error"
        assert "injected fault" in failed.json()["error"]["message"] and "x-request-id" in failed.headers
        assert ok.status_code == 200 and http.get("/healthz").status_code == 200
    assert_idle(server)


@pytest.mark.parametrize("stream", [False, True])
def test_a_deadline_stops_the_request_and_frees_its_slot(server, stream):
    inject(server.engine, Fault(step_delay=0.02))  # 400 tokens would take ~8 s
    try:
        with keyed(server) as http:
            start = time.monotonic()
            if stream:
                with http.stream("POST", "/v1/completions", json={**LONG, "timeout": 0.5, "stream": True}) as r:
                    events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
                error = json.loads(events[-1])["error"]
                assert r.status_code == 200 and len(events) > 2  # some tokens, then the error event
            else:
                r = http.post("/v1/completions", json={**LONG, "timeout": 0.5})
                error = r.json()["error"]
                assert r.status_code == 504
            assert error["code"] == "timeout" and "0.5 s" in error["message"]
            assert time.monotonic() - start < 5
    finally:
        inject(server.engine, Fault())
    assert_idle(server)


def test_the_server_wide_deadline_applies_to_scoring_too(tiny_model_dir):
    live = start_server(model=tiny_model_dir, request_timeout=0.5)
    try:
        inject(live.engine, Fault(step_delay=0.3))
        texts = [f"text number {i} " * 40 for i in range(30)]  # ~4000 tokens: many steps of 256
        response = live.http().post("/v1/score", json={"input": texts})
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        assert "GPT2_REQUEST_TIMEOUT" in response.json()["error"]["message"]
        inject(live.engine, Fault())
        assert_idle(live)
    finally:
        live.stop()


def test_a_client_that_sends_its_body_too_slowly_gets_408(server):
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alpha\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\": ")
        start = time.monotonic()
        answer = sock.recv(65536).decode()
        assert time.monotonic() - start < 5  # GPT2_READ_TIMEOUT is 1 s here
    assert answer.startswith("HTTP/1.1 408") and "GPT2_READ_TIMEOUT" in answer and "x-request-id" in answer.lower()
    assert_idle(server)


def test_one_key_may_have_one_request_in_flight(server):
    inject(server.engine, Fault(step_delay=0.02))
    try:
        with keyed(server) as http, http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)  # alpha's stream is running
            second = keyed(server).post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            other = keyed(server, "beta").post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        assert second.json()["error"]["code"] == "key_concurrency"
        assert other.status_code == 200
    finally:
        inject(server.engine, Fault())
    assert_idle(server)
    assert keyed(server).post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_an_unexpected_error_is_a_500_with_the_request_id(server, caplog):
    tokenizer = server.state.service.tokenizer
    original = tokenizer.encode

    def broken(text):
        raise RuntimeError("a bug")

    tokenizer.encode = broken
    try:
        with caplog.at_level(logging.ERROR, logger="app.api.context"):
            response = keyed(server).post("/tokenize", json={"prompt": "x"}, headers={"X-Request-ID": "bug-1"})
    finally:
        tokenizer.encode = original
    assert response.status_code == 500 and response.headers["x-request-id"] == "bug-1"
    error = response.json()["error"]
    assert error["code"] == "internal_error" and "bug-1" in error["message"]
    assert any("bug-1" in r.getMessage() for r in caplog.records)
    assert_idle(server)


def test_docs_can_sit_behind_the_keys_or_be_off(tiny_model_dir):
    behind = create_app(Settings(model=tiny_model_dir, api_keys="k", docs="keys"))
    off = create_app(Settings(model=tiny_model_dir, docs="off"))
    from fastapi.testclient import TestClient

    with TestClient(behind) as client:  # (no model needed: the docs are not the engine)
        assert client.get("/openapi.json").status_code == 401
        assert client.get("/docs").status_code == 401
        schema = client.get("/openapi.json", headers={"Authorization": "Bearer k"})
        assert schema.status_code == 200 and "/v1/completions" in schema.json()["paths"]
    with TestClient(off) as client:
        assert client.get("/openapi.json").status_code == 404 and client.get("/docs").status_code == 404


def test_keys_that_hold_no_key_refuse_to_start_and_no_keys_warns(tiny_model_dir, caplog):
    for value in (",", " ", "", "good,"):
        proc = spawn({"GPT2_MODEL": tiny_model_dir, "GPT2_API_KEYS": value, "GPT2_PORT": str(free_port())})
        assert proc.wait(60) == 2, value
        output = proc.stdout.read()
        assert "GPT2_API_KEYS" in output and "Traceback" not in output and len(output.strip().splitlines()) == 1
    with caplog.at_level(logging.WARNING, logger="app.main"):
        create_app(Settings(model=tiny_model_dir))
    assert any("GPT2_API_KEYS is unset" in r.getMessage() for r in caplog.records)


def test_sigterm_while_the_model_loads_exits_promptly_and_leaves_no_engine_behind():
    port = free_port()
    proc = spawn({"GPT2_MODEL": "gpt2", "GPT2_LOAD_FORMAT": "dummy", "GPT2_PORT": str(port),
                  "GPT2_LOG_FORMAT": "text"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{url}/healthz"), timeout=60)  # listening, the engine still loading
        assert httpx.get(f"{url}/readyz").json()["status"] == "loading"
        kids = descendants(proc.pid)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert time.monotonic() - start < 10
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in kids))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_connections_beyond_the_limit_are_refused(tiny_model_dir):
    port = free_port()
    proc = spawn({"GPT2_MODEL": tiny_model_dir, "GPT2_PORT": str(port), "GPT2_MAX_CONNECTIONS": "2",
                  "GPT2_KEEP_ALIVE_TIMEOUT": "1"})
    try:
        from tests.integration.conftest import wait_ready

        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        body = {"prompt": "x", "max_tokens": 500, "ignore_eos": True, "stream": True}
        held = []
        try:
            for _ in range(2):  # two streams hold both connections
                client = httpx.Client(base_url=url, timeout=30)
                stream = client.stream("POST", "/v1/completions", json=body)
                lines = stream.__enter__().iter_lines()  # keep it: a dropped iterator closes the response
                next(lines)
                held.append((client, stream, lines))
            over = httpx.get(f"{url}/healthz", timeout=10)  # an OpenAI-shaped 503, and the connection closed
            assert over.status_code == 503 and over.json()["error"]["code"] == "too_many_connections"
            assert over.headers["connection"] == "close" and over.headers["retry-after"] == "1"
        finally:
            for client, stream, _ in held:
                stream.__exit__(None, None, None)
                client.close()
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=10).status_code == 200)
        # an idle keep-alive connection is closed after GPT2_KEEP_ALIVE_TIMEOUT
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(5)
            answer, deadline = b"", time.monotonic() + 10
            while b'{"status":"ok"}' not in answer and time.monotonic() < deadline:
                answer += sock.recv(4096) or b"(closed)"
            assert answer.startswith(b"HTTP/1.1 200")
            start = time.monotonic()
            assert sock.recv(4096) == b""  # closed by the server
            assert time.monotonic() - start < 4
    finally:
        proc.terminate()
        proc.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_the_chaos_of_many_keys_leaves_no_counts(server):
    """Many requests on two keys, some cut off by their clients: the per-key counts return to 0."""

    def burst(key: str) -> None:
        for i in range(10):
            with contextlib.suppress(httpx.TimeoutException):
                keyed(server, key).post("/v1/completions", timeout=0.05 if i % 3 == 0 else 30,
                                        json={"prompt": f"n{i}", "max_tokens": 30, "ignore_eos": True})

    threads = [threading.Thread(target=burst, args=(key,)) for key in ("alpha", "beta", "alpha", "beta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert_idle(server)
