"""A real server: the app under uvicorn on 127.0.0.1 (an ephemeral port), in a thread of the
test process, with the tiny model and the real tokenizer."""

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from openai import OpenAI

from app.config import Settings
from app.main import create_app


@dataclass
class LiveServer:
    url: str
    app: object
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def state(self):
        return self.app.state.gpt2

    @property
    def engine(self):
        return self.state.service.engine

    def client(self, **kwargs) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=kwargs.pop("api_key", "none"), max_retries=0, **kwargs)

    def http(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def spawn(env: dict[str, str], command: tuple[str, ...] = ("app.cli", "serve")) -> subprocess.Popen:
    """`gpt2-serve serve` (or another `python -m` command) as a process of its own (its output in .stdout)."""
    return subprocess.Popen([sys.executable, "-m", *command], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else f"exit code {proc.returncode}"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server not ready")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def engine_pid(server_pid: int) -> int:
    """The engine process under a server: the one descendant that loaded torch (the API processes,
    their body parsers and multiprocessing's resource tracker never do)."""
    for pid in descendants(server_pid):
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                if b"libtorch" in f.read():
                    return pid
        except OSError:
            pass
    raise AssertionError("no engine process")


def free_port() -> int:
    """A port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(**overrides) -> LiveServer:
    settings = Settings(**{"max_batch_size": 16, "max_num_batched_tokens": 256, "max_queue": 64, **overrides})
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    live = LiveServer(f"http://127.0.0.1:{port}", app, server, thread)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{live.url}/readyz", timeout=2).status_code == 200:
                return live
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    live.stop()
    raise RuntimeError("the test server did not become ready")


@pytest.fixture(scope="session")
def live(tiny_model_dir):
    # min_stride 1: the scoring tests check sliding windows exactly with strides of a few tokens;
    # max_request_share 1: some send requests that fill the test server's whole queue (64)
    server = start_server(model=tiny_model_dir, served_model_name="tiny-gpt2", min_stride=1, max_request_share=1.0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(live):
    """A client of the shared test server."""
    with httpx.Client(base_url=live.url, timeout=120) as client:
        yield client


def score(http, **body) -> dict:
    """POST /v1/score, which must answer 200: its JSON."""
    response = http.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()
