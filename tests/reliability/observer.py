"""The observer of an attack (attacks.measure), in a process of its own: it probes /healthz every
few milliseconds and sends a normal request again and again, so that its timings are the server's,
not those of a client process whose attacking threads hold the GIL. Imports nothing but httpx.

Protocol over a multiprocessing queue pair: it puts ("quiet", ms) once it has measured the normal
request alone, runs until it gets "stop", then puts ("done", report)."""

import statistics
import threading
import time

import httpx


def observe(url: str, headers: dict | None, normal: dict, probe_every: float, commands, results) -> None:
    with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
        http.post("/v1/completions", json=normal)
        quiet = []
        for _ in range(20):
            start = time.perf_counter()
            http.post("/v1/completions", json=normal)
            quiet.append(time.perf_counter() - start)
    results.put(("quiet", statistics.median(quiet)))
    stop = threading.Event()
    probes: list[tuple[object, float]] = []
    normals: list[tuple[object, float]] = []

    def probe() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                probes.append(timed(lambda: client.get(f"{url}/healthz")))
                stop.wait(probe_every)

    def normal_requests() -> None:
        with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
            while not stop.is_set():
                normals.append(timed(lambda: client.post("/v1/completions", json=normal)))
                stop.wait(0.05)

    threads = [threading.Thread(target=probe), threading.Thread(target=normal_requests)]
    for t in threads:
        t.start()
    commands.get()  # "stop"
    stop.set()
    for t in threads:
        t.join(60)
    results.put(("done", {"quiet": statistics.median(quiet), "probes": probes, "normals": normals}))


def timed(call) -> tuple[object, float]:
    """(status, or the name of the error that replaced it; seconds)."""
    start = time.perf_counter()
    try:
        status = call().status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return status, time.perf_counter() - start
