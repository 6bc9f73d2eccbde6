"""Several API processes (GPT2_API_SERVERS=2) fail gracefully: the engine's death ends every stream of
every API process at once with `engine_dead`; an API process killed mid-traffic is replaced while the
other serves on (a chaos soak: no stream left hanging, every gauge and count back to 0, memory flat).

The model here is slower than the tests' tiny one (4 layers, 256 dims), so that streams are still
running when the engine or an API process is killed."""

import json
import os
import random
import signal
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_hf_model
from tests.integration.conftest import children, descendants, engine_pid, wait_for
from tests.reliability.attacks import read_stream, run_server
from tests.reliability.conftest import rss

KEYS = {"Authorization": "Bearer alpha"}, {"Authorization": "Bearer beta"}


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory, tiny_model_dir) -> str:
    path = tmp_path_factory.mktemp("slow-gpt2")
    make_hf_model(n_layer=4, n_embd=256, n_positions=1024).save_pretrained(path)
    for name in ("vocab.json", "merges.txt"):
        os.symlink(os.path.join(tiny_model_dir, name), path / name)
    return str(path)


def api_processes(server_pid: int) -> list[int]:
    """The supervisor's API processes: its children but the engine and multiprocessing's resource tracker."""
    engine = engine_pid(server_pid)
    return [pid for pid in children(server_pid) if pid != engine and b"resource_tracker" not in cmdline(pid)]


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_the_engine_dying_ends_the_streams_of_every_api_process_at_once(slow_model_dir):
    proc, url = run_server({"GPT2_MODEL": slow_model_dir, "GPT2_API_SERVERS": "2"})
    try:
        firsts = [threading.Event() for _ in range(8)]
        results = [None] * 8

        def stream(i: int) -> None:  # a connection each: the kernel spreads them over both API processes
            results[i] = read_stream(url, {"prompt": f"s{i}", "max_tokens": 1000, "ignore_eos": True},
                                     first=firsts[i])

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        assert all(first.wait(60) for first in firsts)
        killed = time.monotonic()
        os.kill(engine_pid(proc.pid), signal.SIGKILL)
        for t in threads:
            t.join(30)
        ended = [r["ended"] - killed for r in results]
        print(f"streams ended {min(ended):.2f}-{max(ended):.2f} s after the engine was killed")
        for r in results:
            error = json.loads(r["events"][-1])["error"]
            assert r["status"] == 200 and error["code"] == "engine_dead" and "[DONE]" not in r["events"]
        assert max(ended) < 3.0
        assert proc.wait(30) == 1  # and the server exits, for the orchestrator to restart it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_chaos_soak_with_api_processes_killed_leaves_nothing_hanging(slow_model_dir, tmp_path):
    proc, url = run_server({"GPT2_MODEL": slow_model_dir, "GPT2_API_SERVERS": "2", "GPT2_MAX_BATCH_SIZE": "16",
                            "GPT2_MAX_QUEUE": "48", "GPT2_API_KEYS": "batch:alpha,interactive:beta",
                            "GPT2_LOG_LEVEL": "ERROR"})
    outcomes: dict = {}
    lock = threading.Lock()
    try:
        def soak(seed: int, seconds: float) -> None:
            rng, deadline = random.Random(seed), time.monotonic() + seconds
            while time.monotonic() < deadline:
                outcome = one_request(url, rng)
                with lock:
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1

        def run(seconds: float, kills: int) -> None:
            threads = [threading.Thread(target=soak, args=(seed, seconds)) for seed in range(6)]
            for t in threads:
                t.start()
            for k in range(kills):  # an API process killed mid-traffic, then another
                time.sleep(seconds / (kills + 1))
                victim = random.Random(k).choice(api_processes(proc.pid))
                os.kill(victim, signal.SIGKILL)
                wait_for(lambda v=victim: len(api_processes(proc.pid)) == 2 and v not in api_processes(proc.pid),
                         timeout=30)  # replaced
            for t in threads:
                t.join(120)
            assert not any(t.is_alive() for t in threads), "a client was left hanging"

        run(6, kills=0)  # warm-up: the engine's memory reaches its working size
        engine = engine_pid(proc.pid)
        before = resting_rss(engine)
        outcomes.clear()
        run(16, kills=2)
        assert set(outcomes) <= {"200", "400", "429", "499", "cut", "engine_error", "timeout"}, outcomes
        assert outcomes.get("200", 0) > sum(outcomes.values()) / 2, outcomes
        assert proc.poll() is None and engine_pid(proc.pid) == engine  # the engine and the server lived on
        wait_for(lambda: all(idle(httpx.get(f"{url}/metrics").text) for _ in range(4)), timeout=30)
        after = resting_rss(engine)
        report = {"outcomes": outcomes, "engine_rss_mb": [round(before / 2**20, 1), round(after / 2**20, 1)]}
        (tmp_path / "soak.json").write_text(json.dumps(report))
        print(json.dumps(report))
        assert after < before * 1.10, report
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=KEYS[0],
                          timeout=30).status_code == 200
        everything = [proc.pid, *descendants(proc.pid)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in everything))  # no process left behind
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def one_request(url: str, rng: random.Random) -> str:
    """A random request: a stream (maybe left early), a completion, a score; what became of it."""
    headers = rng.choice(KEYS)
    body = {"prompt": f"Story {rng.randrange(1000)}", "max_tokens": rng.randint(1, 40), "n": rng.choice([1, 1, 2]),
            "temperature": rng.choice([0, 0.8])}
    try:
        kind = rng.random()
        if kind < 0.4:
            result = read_stream(url, {**body, "stream_options": {"include_usage": True}}, headers)
            last = result["events"][-1] if result["events"] else ""
            if last.startswith("cut"):
                return "cut"  # its API process was killed under it: the connection ended, nothing hangs
            if last == "[DONE]":
                return "200"
            return json.loads(last)["error"]["code"] if last.startswith("{") else str(result["status"])
        if kind < 0.5:  # a client that gives up early
            httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 200, "ignore_eos": True},
                       headers=headers, timeout=0.05)
            return "200"
        if kind < 0.8:
            return str(httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=60).status_code)
        texts = [f"Text {rng.randrange(100)} to score." * rng.randint(1, 10) for _ in range(rng.randint(1, 3))]
        return str(httpx.post(f"{url}/v1/score", json={"input": texts}, headers=headers, timeout=60).status_code)
    except httpx.TimeoutException:
        return "499"
    except httpx.TransportError:
        return "cut"


def idle(metrics: str) -> bool:
    """Nothing running or waiting, and no sequence counted for any key class (one API process's scrape)."""
    values = {(s.name, s.labels.get("key_class")): s.value for f in text_string_to_metric_families(metrics)
              for s in f.samples if s.name in ("gpt2_requests_running", "gpt2_requests_waiting",
                                               "gpt2_key_class_sequences")}
    return bool(values) and not any(values.values()) and ("gpt2_key_class_sequences", "batch") in values


def resting_rss(pid: int, seconds: float = 2.0) -> int:
    """The least RSS over a few samples (the engine hands freed memory back once idle)."""
    samples, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(rss(pid))
        time.sleep(0.1)
    return min(samples)
