"""Reliability suites: hostile input, faults, a chaos soak and schemathesis, against real servers
on 127.0.0.1. Figures (times, RSS, probe latencies) are printed and written under the test's
temporary directory; assertions use generous bounds, stated in each test."""

import statistics
import threading
import time
from pathlib import Path

import httpx

PAGE = 4096


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Prober:
    """Hits a URL every `interval` seconds from a thread of its own and keeps the latencies (a p99
    needs a few hundred: check summary()["n"])."""

    def __init__(self, url: str, interval: float = 0.02):
        self.url, self.interval = url, interval
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    self.statuses.append(client.get(self.url).status_code)
                except httpx.HTTPError as exc:  # no answer: counts, with the time it took to fail
                    self.statuses.append(type(exc).__name__)
                self.latencies.append(time.perf_counter() - start)
                self._stop.wait(self.interval)

    def __enter__(self) -> "Prober":
        self._thread.start()
        self._wait_for(1)
        return self

    def __exit__(self, *exc) -> None:
        self._wait_for(len(self.latencies) + 2)  # probes after the work too
        self._stop.set()
        self._thread.join(30)

    def _wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 30
        while len(self.latencies) < count and time.monotonic() < deadline:
            time.sleep(0.005)

    def summary(self) -> dict:
        return {"n": len(self.latencies), "failed": sum(s != 200 for s in self.statuses),
                "p50_ms": statistics.median(self.latencies) * 1e3,
                "p99_ms": percentile(self.latencies, 0.99) * 1e3, "max_ms": max(self.latencies) * 1e3}
