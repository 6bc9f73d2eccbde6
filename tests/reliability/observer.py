"""The observer of an attack (attacks.measure), in a process of its own: it probes /healthz every
few milliseconds and sends a normal request again and again, so that its timings are the server's,
not those of a client process whose attacking threads hold the GIL. Imports nothing but httpx.

Protocol over a multiprocessing queue pair: it puts ("quiet", seconds) once it has measured the
normal request alone, runs until it gets "stop", measures the normal request alone again, then
puts ("done", report). The quiet time is the median over both quiet spells, so that the machine's
load drifting (it is shared) does not pass for harm done by the attack."""

import statistics
import threading
import time

import httpx


def observe(url: str, headers: dict | None, normal: dict, probe_every: float, commands, results) -> None:
    quiet = alone(url, headers, normal)
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
    time.sleep(0.5)  # (answers to the last attacking requests may still be on their way)
    quiet += alone(url, headers, normal)
    results.put(("done", {"quiet": statistics.median(quiet), "probes": probes, "normals": normals}))


def alone(url: str, headers: dict | None, normal: dict, count: int = 20) -> list[float]:
    """Seconds each of `count` normal requests takes, one after the other."""
    with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
        http.post("/v1/completions", json=normal)
        return [timed(lambda: http.post("/v1/completions", json=normal))[1] for _ in range(count)]


def timed(call) -> tuple[object, float]:
    """(status, or the name of the error that replaced it; seconds)."""
    start = time.perf_counter()
    try:
        status = call().status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return status, time.perf_counter() - start
