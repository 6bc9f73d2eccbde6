"""Telling a long step from a hang: heartbeats from a thread while a step runs, for as long as the
step's size makes its duration plausible.

A client declares the engine hung after GPT2_STEP_TIMEOUT seconds without a word while it has work
(client.py). A legitimately long step (a big prefill of a large model on a small CPU) would be
taken for a hang, so while a step runs this thread keeps the clients informed ("still working on
yours"), but only until the step has run HANG_FACTOR times longer than its size predicts at the
engine's own measured speed; past that it falls silent and the clients' timeout runs. A hang is
thus detected after GPT2_STEP_TIMEOUT plus at most HANG_FACTOR x the step's expected duration.

The thread and the engine loop share the ROUTER socket, one at a time: the loop holds `lock` except
while it is inside a step (ZeroMQ allows a socket to move between threads behind a full memory
barrier, which the lock gives).
"""

import threading
import time
from collections.abc import Callable

from app.engine.protocol import StepStats

HANG_FACTOR = 10.0
FIRST_STEP_VOUCH = 300.0  # seconds a step may run before any step was measured (e.g. a first huge prefill)
DECAY = 0.99  # per step: the seconds-per-token estimate follows the slowest recent steps, forgetting slowly
BEAT_INTERVAL = 0.5  # seconds between heartbeats while a step runs


class StepSpeed:
    """The engine's seconds per token, from the slowest recent steps (an envelope, so that a step
    is never expected to be faster than steps like it have been)."""

    def __init__(self):
        self.seconds_per_token: float | None = None

    def measured(self, stats: StepStats) -> None:
        tokens = stats.num_prefill_tokens + stats.num_decode_tokens
        if tokens:
            rate = stats.duration / tokens
            known = self.seconds_per_token
            self.seconds_per_token = rate if known is None else max(rate, known * DECAY)

    def plausible(self, tokens: int) -> float:
        """Seconds a step of this many tokens may run before it stops looking like work."""
        if self.seconds_per_token is None:
            return FIRST_STEP_VOUCH
        return HANG_FACTOR * tokens * self.seconds_per_token


class Heartbeat(threading.Thread):
    """While `running()` names a step (its start time and tokens) that is still plausible, call
    `beat()` (under `lock`) every BEAT_INTERVAL seconds."""

    def __init__(self, running: Callable[[], tuple[float, int] | None], speed: StepSpeed, lock: threading.Lock,
                 beat: Callable[[], None]):
        super().__init__(name="gpt2-engine-heartbeat", daemon=True)
        self.running, self.speed, self.lock, self.beat = running, speed, lock, beat

    def run(self) -> None:
        while True:
            time.sleep(BEAT_INTERVAL)
            step = self.running()
            if step is None:
                continue
            started, tokens = step
            if time.monotonic() - started < self.speed.plausible(tokens) and self.lock.acquire(timeout=BEAT_INTERVAL):
                try:
                    if self.running() is step:  # still the same step (the loop took the lock back after it)
                        self.beat()
                finally:
                    self.lock.release()
