"""The app's lifecycle, owned in one place: its phase, the HTTP requests in flight, the drain, and
one table saying what the probes and a refused API request answer in each phase.

    loading ──► ready ──► draining ──► (exit 0)
       │          │          │
       ▼          ▼          ▼
     failed    engine dead ◄─┘         (exit 1: the orchestrator restarts the pod)

The drain is the same however the app runs: the lifespan calls `drain_on_signals`, which wraps
the server's own SIGTERM/SIGINT handler (uvicorn's, under `gpt2-serve serve`, plain `uvicorn
--factory app.main:create_app` or gunicorn's uvicorn worker): the first signal flips readiness to
503 and refuses new requests with 503 `draining`, cuts request bodies still arriving, lets admitted
requests (streams included) finish within GPT2_DRAIN_TIMEOUT, and only then hands over to the
server's exit; requests still running at that deadline are cut off (their tasks cancelled: a
stream ends mid-way, a request not yet answered gets 503 `draining`). A second signal cuts them off
at once. `gpt2-serve serve` adds what needs uvicorn's internals (app/server.py): idle keep-alive
connections closed as the drain starts, and exit code 0 after a clean drain (plain uvicorn
re-raises the signal, so its exit status is the signal's).
"""

import asyncio
import enum
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.api.errors import APIError

log = logging.getLogger(__name__)

# after the engine died: seconds for the failed requests' answers to get out before the server exits
ENGINE_DEATH_GRACE = 1.0


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    ENGINE_DEAD = "engine dead"
    FAILED = "failed"


@dataclass(frozen=True)
class Answers:
    """What the app answers in a phase: /healthz and /readyz statuses, and the 503 an API request
    gets (code, message, Retry-After), or None when it is served."""

    live: int
    ready: int
    refusal: tuple[str, str, str | None] | None


ANSWERS = {
    Phase.LOADING: Answers(200, 503, ("not_ready", "the model is not ready yet", "5")),
    Phase.READY: Answers(200, 200, None),
    Phase.DRAINING: Answers(200, 503, ("draining", "the server is shutting down; retry on another replica", None)),
    Phase.ENGINE_DEAD: Answers(503, 503, ("engine_dead", "the engine is down: {reason}", None)),
    Phase.FAILED: Answers(503, 503, ("not_ready", "the model failed to load: {reason}", None)),
}


class Lifecycle:
    def __init__(self, drain_timeout: float):
        self.phase = Phase.LOADING
        self.reason: str | None = None  # why loading failed or the engine died
        self.error: BaseException | None = None  # the exception loading failed with
        self.drain_timeout = drain_timeout
        self.requests: set[asyncio.Task] = set()  # the tasks serving HTTP requests (probes included)
        self.cutting = False  # set when those still running are being cut off (the drain's end)
        self.body_reads: set[asyncio.Timeout] = set()  # deadlines of request bodies being read: cut on drain
        self.on_drain: list[Callable[[], None]] = []  # e.g. the server closing idle connections
        self.stop: Callable[[], None] | None = None  # make the server exit (set by it, or by drain_on_signals)
        self._engine = None  # the engine client, once ready: its sequences in flight count in the drain

    # --- transitions -------------------------------------------------------------------------------
    def ready(self, engine) -> None:
        if self.phase is Phase.LOADING:
            self.phase, self._engine = Phase.READY, engine

    def failed(self, exc: BaseException) -> None:
        """Loading failed: the probes answer 503 and the server exits (code 1)."""
        self.phase, self.error, self.reason = Phase.FAILED, exc, str(exc)
        self._stop()

    def engine_died(self, reason: str) -> None:
        """The engine client's death listener: probes answer 503 from now on, and the server exits
        shortly (so that an orchestrator restarts the pod even without a liveness probe)."""
        self.phase, self.reason = Phase.ENGINE_DEAD, reason
        asyncio.get_running_loop().call_later(ENGINE_DEATH_GRACE, self._stop)

    def begin_drain(self) -> bool:
        """Refuse new requests and cut bodies still arriving (they answer 503 at once); False if
        there is nothing to drain (not ready: loading, failed, dead, or draining already)."""
        if self.phase is not Phase.READY:
            return False
        self.phase = Phase.DRAINING
        now = asyncio.get_running_loop().time()
        for deadline in list(self.body_reads):
            deadline.reschedule(now)
        for hook in self.on_drain:
            hook()
        return True

    async def drain(self) -> None:
        """Let admitted requests finish (GPT2_DRAIN_TIMEOUT at most), cut off the rest, then stop
        the server."""
        log.info("draining (up to %.0f s) before exit", self.drain_timeout)
        deadline = time.monotonic() + self.drain_timeout
        while self.busy and time.monotonic() < deadline and self.phase is Phase.DRAINING:
            await asyncio.sleep(0.05)
        if self.phase is not Phase.DRAINING:  # the engine died meanwhile: it stops the server itself
            log.warning("the drain ended: %s", self.reason)
            return
        if self.busy:
            log.warning("drain timeout: %d requests still running are cut off", self.in_flight)
            await self.cut_off()
        else:
            log.info("drained: every admitted request has finished")
        self._stop()

    async def cut_off(self) -> None:
        """Cancel every request still being served, let their cancellations run (each ends its answer:
        context.py), and abort whatever they left in the engine."""
        self.cutting = True
        tasks = list(self.requests)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._engine is not None:  # a cancelled stream's sequences (its response's close never ran)
            self._engine.abort_all()

    # --- answers -----------------------------------------------------------------------------------
    @property
    def is_ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def draining(self) -> bool:
        return self.phase is Phase.DRAINING

    @property
    def in_flight(self) -> int:
        return len(self.requests)

    @property
    def busy(self) -> bool:
        return bool(self.in_flight or (self._engine is not None and self._engine.num_unfinished))

    def refusal(self) -> APIError | None:
        """The 503 an API request gets now, or None when requests are served."""
        refusal = ANSWERS[self.phase].refusal
        if refusal is None:
            return None
        code, message, retry_after = refusal
        return APIError(503, message.format(reason=self.reason), code=code,
                        headers={"Retry-After": retry_after} if retry_after else None)

    def probe(self, which: str) -> tuple[int, dict]:
        """(status, body) of /healthz ("live") or /readyz ("ready")."""
        answers = ANSWERS[self.phase]
        status = answers.live if which == "live" else answers.ready
        body = {"status": "ok" if which == "live" and status == 200 else self.phase.value}
        if self.reason is not None:
            body["reason"] = self.reason
        return status, body

    def _stop(self) -> None:
        if self.stop is not None:
            self.stop()


def drain_on_signals(lifecycle: Lifecycle) -> None:
    """Turn the first SIGTERM/SIGINT into a drain before the server's own handler runs (see the
    module's docstring). Only a server that handles signals in the main thread has one to wrap."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        server_exit = signal.getsignal(sig)
        if not callable(server_exit):
            continue  # nothing handles it (default or ignored): not ours to change

        async def cut_off_and_exit(signum: int, server_exit) -> None:
            await lifecycle.cut_off()
            server_exit(signum, None)

        def in_loop(signum: int, server_exit=server_exit) -> None:
            if lifecycle.draining:  # a second signal: what still runs is cut off, then exit
                loop.create_task(cut_off_and_exit(signum, server_exit))
                return
            if not lifecycle.begin_drain():  # loading, dead or failed: exit now
                server_exit(signum, None)
                return
            log.info("signal %s", signal.Signals(signum).name)
            loop.create_task(lifecycle.drain())

        # a signal handler interrupts the loop's own thread: it only hands the signal to the loop
        signal.signal(sig, lambda signum, frame, in_loop=in_loop: loop.call_soon_threadsafe(in_loop, signum))
        if sig == signal.SIGTERM and lifecycle.stop is None:  # plain uvicorn: its own exit, after a drain too
            lifecycle.stop = lambda server_exit=server_exit: server_exit(signal.SIGTERM, None)
