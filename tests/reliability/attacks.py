"""The attacks of issue 19, and how their harm is measured: used by tests/reliability/test_attacks.py
(bounds asserted) and bench/attacks.py (the figures, against any checkout: before/after).

Each attack runs against a real server (`gpt2-serve serve` in a process of its own) in windows of
ATTACK_WINDOW seconds between quiet ones of QUIET_WINDOW; an observer process (observer.py) hits
/healthz every 5 ms and sends a normal request again and again throughout, and a sampler reads the
resident memory of every process of the server. `measure()` reports:

- answers: how many, their statuses, the slowest (seconds), the largest body (bytes);
- healthz: the probes during the attack windows, p50/p99/max (ms);
- normal: the median time of the normal request in the quiet windows and in the attack windows
  (interleaved, so that the shared machine's drifting load does not pass for harm or hide it);
- rss_growth_mb: the largest growth of the server's processes' summed RSS over its value before.
"""

import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from tests.integration.conftest import descendants
from tests.reliability.conftest import percentile, rss
from tests.reliability.observer import ATTACK, QUIET, SETTLING, observe

NORMAL = {"prompt": "Hello there", "max_tokens": 4, "temperature": 0}
LIMIT_BYTES = 4 * 1024 * 1024
ATTACK_WINDOW, QUIET_WINDOW = 1.0, 0.5  # seconds


@dataclass
class Answers:
    """What the attacking clients got back."""

    statuses: list = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)  # the first few, for the report
    lock: threading.Lock = field(default_factory=threading.Lock)
    gate: threading.Event = field(default_factory=threading.Event)  # set while an attack window is open
    over: bool = False
    active: int = 0  # attacking requests under way

    def go(self) -> bool:
        """Wait for an attack window; False once the attack is over."""
        while not self.gate.wait(0.05):
            if self.over:
                return False
        return not self.over

    @contextlib.contextmanager
    def sending(self):
        with self.lock:
            self.active += 1
        try:
            yield
        finally:
            with self.lock:
                self.active -= 1

    def add(self, status, seconds: float, body: bytes) -> None:
        with self.lock:
            self.statuses.append(status)
            self.seconds.append(seconds)
            self.sizes.append(len(body))
            if len(self.bodies) < 3:
                self.bodies.append(body[:300].decode("utf-8", "replace"))


def server_rss(pid: int) -> int:
    """Resident memory of the server and every process under it (engine, API processes, parsers)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):  # (a process that just ended)
            total += rss(p)
    return total


def measure(url: str, pid: int, attack: Callable[[Answers, float], None], seconds: float,
            clients: int = 1, probe_every: float = 0.005, headers: dict | None = None) -> dict:
    """Run `attack(answers, deadline)` in `clients` threads, in attack windows adding up to about
    `seconds`, and measure (the normal requests carry `headers`)."""
    ctx = multiprocessing.get_context("spawn")
    commands, results, phase = ctx.Queue(), ctx.Queue(), ctx.Value("i", SETTLING, lock=False)
    watcher = ctx.Process(target=observe, args=(url, headers, NORMAL, probe_every, phase, commands, results),
                          daemon=True)
    watcher.start()
    answers, stop = Answers(), threading.Event()
    try:
        assert results.get(timeout=120) == "ready"
        before = server_rss(pid)
        peak = [before]

        def sample_memory() -> None:
            while not stop.wait(0.1):
                peak.append(server_rss(pid))

        def settle() -> None:  # no attacking request under way (a drip may take a few seconds to end)
            phase.value = SETTLING
            deadline = time.monotonic() + 30
            while answers.active and time.monotonic() < deadline:
                time.sleep(0.01)

        sampler = threading.Thread(target=sample_memory)
        sampler.start()
        attackers = [threading.Thread(target=attack, args=(answers, time.monotonic() + 600)) for _ in range(clients)]
        for t in attackers:
            t.start()
        for _ in range(max(1, round(seconds / ATTACK_WINDOW))):
            settle()
            phase.value = QUIET
            time.sleep(QUIET_WINDOW)
            phase.value = ATTACK
            answers.gate.set()
            time.sleep(ATTACK_WINDOW)
            answers.gate.clear()
        settle()
        phase.value = QUIET
        time.sleep(QUIET_WINDOW)
        phase.value = SETTLING
        answers.over = True
        for t in attackers:
            t.join(120)
        stop.set()
        sampler.join(60)
        commands.put("stop")
        seen = results.get(timeout=120)
    finally:
        answers.over = True
        watcher.join(30)
        if watcher.is_alive():
            watcher.kill()
    probe_ms = [took * 1e3 for p, _, took in seen["probes"] if p == ATTACK]
    quiet = [took for p, status, took in seen["normals"] if p == QUIET and status == 200]
    normal = [took for p, status, took in seen["normals"] if p == ATTACK and status == 200]
    return {"answers": len(answers.statuses), "statuses": sorted(set(map(str, answers.statuses))),
            "slowest_s": round(max(answers.seconds, default=float("nan")), 3),
            "largest_body_bytes": max(answers.sizes, default=0), "examples": answers.bodies[:2],
            "healthz": {"n": len(probe_ms), "failed": sum(s != 200 for p, s, _ in seen["probes"] if p == ATTACK),
                        "p50_ms": round(statistics.median(probe_ms), 1), "p99_ms": round(p99(probe_ms), 1),
                        "max_ms": round(max(probe_ms), 1)},
            "normal_quiet_ms": round(statistics.median(quiet) * 1e3, 1), "normal_quiet_n": len(quiet),
            "normal_during_ms": round(statistics.median(normal) * 1e3, 1) if normal else None,
            "normal_during_n": len(normal),
            "normal_failed": sum(s != 200 for _, s, _ in seen["normals"]),
            "normal_ratio": round(statistics.median(normal) / statistics.median(quiet), 2) if normal else None,
            "rss_before_mb": round(before / 2**20, 1), "rss_growth_mb": round((max(peak) - before) / 2**20, 1)}


def post_raw(http: httpx.Client, path: str, body: bytes, headers: list | None = None):
    """POST bytes; returns (status or the exception's name, seconds, response body)."""
    start = time.perf_counter()
    try:
        response = http.post(path, content=body, headers=[("Content-Type", "application/json"), *(headers or [])])
        return response.status_code, time.perf_counter() - start, response.content
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.perf_counter() - start, b""


def repeat(url: str, path: str, body: bytes, headers: list | None = None, pause: float = 0.0):
    """An attack: POST this body again and again until the deadline, `pause` seconds apart (on one
    connection while the server keeps it open: the attacking client itself should cost the shared
    CPU little)."""

    def attack(answers: Answers, deadline: float) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while answers.go() and time.monotonic() < deadline:
                with answers.sending():
                    answers.add(*post_raw(http, path, body, headers))
                time.sleep(pause)

    return attack


def ids_body(n: int, value: str = "-1", key: str = "prompt") -> bytes:
    """{"prompt": [value, value, ...]} with n values, built as bytes (no client-side cost per request)."""
    return b'{"%s": [' % key.encode() + b",".join([value.encode()] * n) + b"]}"


def valid_ids_body(target_bytes: int = LIMIT_BYTES - 1024) -> bytes:
    """A prompt of valid token ids (5 digits each) filling the body up to the size limit."""
    n = (target_bytes - 20) // 6
    return b'{"prompt": [' + b",".join(b"%d" % (10000 + i % 40000) for i in range(n)) + b"]}"


def huge_logit_bias_key(digits: int = 4301, stream: bool = False) -> bytes:
    return json.dumps({"prompt": "x", "max_tokens": 2, "stream": stream, "logit_bias": {"9" * digits: 1}}).encode()


def rare_text(chars: int = 524_288) -> bytes:
    """/tokenize of characters that each take several GPT-2 tokens."""
    return json.dumps({"prompt": "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(chars))},
                      ensure_ascii=False).encode()


def drip(url: str, every: float, headers_only: bool = False):
    """An attack: a client that sends its request body (or already its headers) one byte every
    `every` seconds; what it gets: the server's answer, or "closed"."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n")

    def attack(answers: Answers, deadline: float) -> None:
        while answers.go() and time.monotonic() < deadline:
            start, answer = time.perf_counter(), b""
            with answers.sending(), socket.create_connection((host, int(port)), timeout=60) as sock:
                if not headers_only:
                    sock.sendall(head)
                pending = iter(head if headers_only else b"{" * 100)
                sock.settimeout(every)
                while time.perf_counter() - start < 60 and b"\r\n\r\n" not in answer:
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:  # nothing from the server yet: one more byte
                        byte = next(pending, None)
                        if byte is None:
                            break
                        try:
                            sock.sendall(bytes([byte]))
                        except OSError:
                            break
                        continue
                    except OSError:
                        break
                    if not chunk:
                        break
                    answer += chunk
            status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else "closed"
            answers.add(status, time.perf_counter() - start, answer)

    return attack


def read_stream(url: str, body: dict, headers: dict | None = None, first: threading.Event | None = None) -> dict:
    """Read a completion stream; its status, events and when it ended (time.monotonic)."""
    events, status = [], None
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, headers=headers,
                          timeout=60) as response:
            status = response.status_code
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if first is not None:
                        first.set()
    except httpx.HTTPError as exc:  # the connection was cut (an API process killed under it)
        events.append(f"cut: {type(exc).__name__}")
    return {"status": status, "events": events, "ended": time.monotonic()}


@dataclass(frozen=True)
class Case:
    """One attack: its name, what the server answers, how many clients, for how long."""

    name: str
    build: Callable[[str], Callable[[Answers, float], None]]  # url -> attack
    expect: tuple  # the statuses each answer may have
    clients: int = 1
    seconds: float = 3.0
    keyed: bool = False  # against the server with API keys (and GPT2_KEY_CONCURRENCY=1)
    normal_ratio: float = 3.0  # the bound on a normal request's slowdown


TWO_KEYS = [("Authorization", "Bearer alpha"), ("Authorization", "Bearer beta")]
# The cases, each kept up for the measurement window: its clients send their request again
# every ROUND seconds (the looping case: back to back). A flood of cheap requests as fast as a client
# can send them is another attack (one event loop takes ~0.5 ms to refuse each: rate limiting is a
# proxy's job); bench/attacks.py --flood measures it.
ROUND = 0.1
CASES = [
    Case("3 x 4 MB bodies of -1 token ids at once",
         lambda url: repeat(url, "/v1/completions", ids_body((LIMIT_BYTES - 64) // 3), pause=ROUND), (400,),
         clients=3),
    Case("6 clients looping on valid 4 MB token-id lists",
         lambda url: repeat(url, "/v1/completions", valid_ids_body()), (400,), clients=6, seconds=5),
    Case("logit_bias key of 4301 digits (stream or not)",
         lambda url: alternate(repeat(url, "/v1/completions", huge_logit_bias_key(), pause=ROUND),
                               repeat(url, "/v1/completions", huge_logit_bias_key(stream=True), pause=ROUND)),
         (400,), clients=2),
    Case("4 x /tokenize of 512k rare characters", lambda url: repeat(url, "/tokenize", rare_text(), pause=ROUND),
         (400,), clients=4),
    Case("a body dripped one byte every 0.5 s (GPT2_READ_TIMEOUT=2)", lambda url: drip(url, 0.5), (408,), clients=2),
    Case("headers dripped one byte every 0.5 s (GPT2_READ_TIMEOUT=2)", lambda url: drip(url, 0.5, headers_only=True),
         ("closed",), clients=2),
    Case("4 requests with two Authorization headers (GPT2_KEY_CONCURRENCY=1)",
         lambda url: repeat(url, "/v1/completions", json.dumps({"prompt": "x", "max_tokens": 200,
                                                                "ignore_eos": True}).encode(), TWO_KEYS,
                            pause=ROUND), (400,), clients=4, keyed=True),
    # not in the table: auth comes before the body (no memory, no parsing: 401 at once)
    Case("3 x 4 MB bodies without a key (GPT2_API_KEYS set)",
         lambda url: repeat(url, "/v1/completions", ids_body((LIMIT_BYTES - 64) // 3), pause=ROUND), (401,),
         clients=3, keyed=True),
]
SERVER = {"GPT2_READ_TIMEOUT": "2", "GPT2_MAX_BATCH_SIZE": "16", "GPT2_MAX_NUM_BATCHED_TOKENS": "512"}
KEYED_SERVER = {**SERVER, "GPT2_API_KEYS": "alpha,beta", "GPT2_KEY_CONCURRENCY": "1"}
NORMAL_KEY = {"Authorization": "Bearer beta"}  # the normal requests' key on the keyed server


def alternate(*attacks):
    """An attack made of these, in turn."""
    turn = iter(range(1 << 30))

    def attack(answers: Answers, deadline: float) -> None:
        attacks[next(turn) % len(attacks)](answers, deadline)

    return attack


def run_server(env: dict, pythonpath: str | None = None):
    """`gpt2-serve serve` with these GPT2_* settings (and this code, when given); (process, url)."""
    from tests.integration.conftest import free_port, wait_ready

    port = free_port()
    extra = {"GPT2_PORT": str(port), "GPT2_LOG_FORMAT": "text", "GPT2_LOG_LEVEL": "WARNING", **env}
    if pythonpath:  # (python -m puts the working directory first: run there)
        extra["PYTHONPATH"] = pythonpath + os.pathsep + os.environ.get("PYTHONPATH", "")
    log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server; a pipe nobody reads would fill)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env={**os.environ, **extra},
                            cwd=pythonpath, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, timeout=120)
    return proc, url


def p99(values: list[float]) -> float:
    return percentile(values, 0.99)
