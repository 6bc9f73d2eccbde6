"""The real server process: start-up failure, and graceful drain on SIGTERM."""

import asyncio
import json
import signal
import socket
import threading
import time

import httpx

from app.engine.faults import Fault, inject
from tests.integration.conftest import free_port, spawn, start_server, wait_for, wait_ready


def test_sigterm_drains_streams_then_exits_zero(tiny_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn({"GPT2_MODEL": tiny_model_dir, "GPT2_PORT": str(port), "GPT2_MAX_BATCH_SIZE": "8",
                  "GPT2_LOG_FORMAT": "json", "GPT2_DRAIN_TIMEOUT": "60"})
    try:
        wait_ready(url, proc)
        started, results = threading.Barrier(9), [None] * 8

        def stream(i: int) -> None:
            body = {"prompt": f"stream {i}", "max_tokens": 480, "ignore_eos": True, "stream": True}
            events = []
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
                lines = (line for line in response.iter_lines() if line.startswith("data: "))
                events.append(next(lines))
                started.wait()
                events.extend(lines)
            results[i] = events

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        started.wait(30)  # all 8 streams are running
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        late = httpx.post(f"{url}/v1/completions", json={"prompt": "late"}, timeout=10)
        assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
        for t in threads:
            t.join(120)
        assert proc.wait(60) == 0
        for events in results:
            assert events[-1] == "data: [DONE]"
            last = json.loads(events[-2][len("data: "):])
            assert last["choices"][0]["finish_reason"] == "length"
            assert sum(len(json.loads(e[6:])["choices"][0]["text"]) > 0 for e in events[:-1]) > 400
        log = proc.stdout.read()
        assert "drained" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_missing_model_fails_start_up_at_once(tmp_path):
    port = free_port()
    start = time.monotonic()
    proc = spawn({"GPT2_MODEL": str(tmp_path / "nothing-here"), "GPT2_PORT": str(port), "HF_HUB_OFFLINE": "1",
                  "GPT2_LOG_FORMAT": "text"})
    try:
        assert proc.wait(60) == 1
        output = proc.stdout.read()
        assert "GPT2_MODEL" in output and "GPT2_LOAD_FORMAT=dummy" in output
        assert time.monotonic() - start < 20  # at once: a process start and a failed lookup, not a timeout
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_closes_idle_connections_and_cuts_bodies_still_arriving_at_once(tiny_model_dir):
    """Idle keep-alive connections and a client dripping its body would each hold the drain for a
    minute (GPT2_KEEP_ALIVE_TIMEOUT, GPT2_READ_TIMEOUT): the drain closes the first and answers the
    second 503 at once, while an admitted stream still finishes."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn({"GPT2_MODEL": tiny_model_dir, "GPT2_PORT": str(port), "GPT2_LOG_FORMAT": "text",
                  "GPT2_DRAIN_TIMEOUT": "60", "GPT2_KEEP_ALIVE_TIMEOUT": "60", "GPT2_READ_TIMEOUT": "60"})
    try:
        wait_ready(url, proc)
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b'{"status":"ok"}' not in answer and (chunk := idle.recv(4096)):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")  # and the connection stays open
        drip = socket.create_connection(("127.0.0.1", port), timeout=10)
        drip.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        events, streaming = start_a_long_stream(url)
        time.sleep(0.2)  # the dripping request is in the app, waiting for its body
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert idle.recv(4096) == b""  # closed by the server
        answer = b""
        while chunk := drip.recv(65536):  # the answer, then the server closes the connection
            answer += chunk
        assert time.monotonic() - start < 3
        assert answer.startswith(b"HTTP/1.1 503") and b'"code":"draining"' in answer, answer
        streaming.join(60)
        assert events[-1] == "data: [DONE]"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_plain_uvicorn_drains_on_sigterm_too(tiny_model_dir):
    """The drain is the app's (app/api/lifecycle.py), not our server's: under `uvicorn --factory
    app.main:create_app` a SIGTERM still refuses new requests with 503 and lets a running stream finish."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn({"GPT2_MODEL": tiny_model_dir, "GPT2_LOG_FORMAT": "text", "GPT2_DRAIN_TIMEOUT": "60"},
                 ("uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1", "--port", str(port)))
    try:
        wait_ready(url, proc)
        events, streaming = start_a_long_stream(url)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        late = httpx.post(f"{url}/v1/completions", json={"prompt": "late"}, timeout=10)
        assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
        streaming.join(60)
        assert events[-1] == "data: [DONE]" and len(events) > 400
        assert proc.wait(60) == -signal.SIGTERM  # uvicorn re-raises the signal once the drain has let it exit
        assert "drained" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_a_long_stream(url: str) -> tuple[list[str], threading.Thread]:
    """A 480-token stream in a thread, once its first events have arrived: (its events so far, the thread)."""
    events: list[str] = []

    def stream() -> None:
        body = {"prompt": "go", "max_tokens": 480, "ignore_eos": True, "stream": True}
        try:
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
                events.extend(line for line in response.iter_lines() if line.startswith("data: "))
        except httpx.RemoteProtocolError:  # the server cut the stream off (the events so far are kept)
            pass

    streaming = threading.Thread(target=stream)
    streaming.start()
    wait_for(lambda: len(events) > 2)
    return events, streaming


def test_the_drain_deadline_cuts_off_what_still_runs(tiny_model_dir):
    """At GPT2_DRAIN_TIMEOUT the requests still running are cut off, however the app is served (here
    plain uvicorn in a thread): a stream ends mid-way, a request not yet answered gets 503 `draining`,
    their engine sequences are aborted, and nothing is left in flight."""
    live = start_server(model=tiny_model_dir, drain_timeout=1.0)
    try:
        inject(live.engine, Fault(step_delay=0.05))  # 480 tokens would take 24 s
        events, streaming = start_a_long_stream(live.url)
        answers = []
        waiting = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{live.url}/v1/completions", json={"prompt": "wait", "max_tokens": 400, "ignore_eos": True}, timeout=60)))
        waiting.start()
        wait_for(lambda: live.engine.num_unfinished == 2)

        async def drain() -> None:
            assert live.state.lifecycle.begin_drain()
            await live.state.lifecycle.drain()

        start = time.monotonic()
        asyncio.run_coroutine_threadsafe(drain(), live.engine.loop).result(30)
        streaming.join(30)
        waiting.join(30)
        assert 1.0 <= time.monotonic() - start < 10
        assert 2 < len(events) < 400 and events[-1] != "data: [DONE]"  # ended mid-way
        assert answers[0].status_code == 503 and answers[0].json()["error"]["code"] == "draining"
        wait_for(lambda: live.engine.num_unfinished == 0 and live.state.lifecycle.in_flight == 0)
    finally:
        inject(live.engine, Fault())
        live.stop()

