"""The observer of an attack (attacks.measure), in a process of its own: it probes /healthz every
few milliseconds and sends a normal request again and again, so that its timings are the server's,
not those of a client process whose attacking threads hold the GIL. Imports nothing but httpx.

`phase` (a shared integer) says what is going on: QUIET (no attack), ATTACK, or SETTLING (the
switch between them). Every probe and normal request is tagged with the phase it started and ended
in; one that saw a switch is dropped. The attack comes in windows between quiet ones, so that the
quiet and attacked timings are taken in the same minutes of a shared machine whose load drifts.

Protocol: it puts "ready" once its clients are warm, runs until it gets "stop", then puts
{"probes": [(phase, status, seconds)], "normals": [(phase, status, seconds)]}."""

import threading
import time

import httpx

SETTLING, QUIET, ATTACK = 0, 1, 2


def observe(url: str, headers: dict | None, normal: dict, probe_every: float, phase, commands, results) -> None:
    stop = threading.Event()
    probes: list[tuple[int, object, float]] = []
    normals: list[tuple[int, object, float]] = []

    def tagged(call, into: list) -> None:
        before = phase.value
        status, seconds = timed(call)
        if phase.value == before != SETTLING:
            into.append((before, status, seconds))

    def probe() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                tagged(lambda: client.get(f"{url}/healthz"), probes)
                stop.wait(probe_every)

    def normal_requests() -> None:
        with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
            while not stop.is_set():
                tagged(lambda: client.post("/v1/completions", json=normal), normals)
                stop.wait(0.02)

    with httpx.Client(base_url=url, timeout=60, headers=headers) as warm:
        warm.post("/v1/completions", json=normal)
    threads = [threading.Thread(target=probe), threading.Thread(target=normal_requests)]
    for t in threads:
        t.start()
    results.put("ready")
    commands.get()  # "stop"
    stop.set()
    for t in threads:
        t.join(60)
    results.put({"probes": probes, "normals": normals})


def timed(call) -> tuple[object, float]:
    """(status, or the name of the error that replaced it; seconds)."""
    start = time.perf_counter()
    try:
        status = call().status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return status, time.perf_counter() - start
