"""Test-only fault injection: making the engine misbehave on purpose (the reliability tests, chaos
drills on a test deployment). Not part of the protocol (protocol.py): an engine process accepts a
`Fault` only when it runs with GPT2_TEST_FAULTS=1 in its environment (the test suite sets it in
tests/conftest.py); any other engine drops the message as one it does not understand.

    inject(engine, Fault(step_delay=0.02))  # engine: an EngineClient; from any thread
"""

import os
import time
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from app.engine.client import EngineClient

ENABLE = "GPT2_TEST_FAULTS"  # =1 in the engine process's environment: Fault messages are accepted


class Fault(msgspec.Struct, tag="fault", array_like=True, omit_defaults=True):
    """Make the engine misbehave from its next step on (a new Fault replaces the last; Fault() heals)."""

    step_delay: float = 0.0  # seconds added to every step
    token_delay: float = 0.0  # seconds added to a step per token it holds (a slow model: long steps are big ones)
    failing_steps: int = 0  # this many steps raise
    hang: float = 0.0  # the next step blocks this long
    exit_code: int | None = None  # the engine process exits at once, with this code

    def strike(self, tokens: int = 0) -> None:
        """Called before each step's forward pass, with the step's number of tokens."""
        if self.exit_code is not None:
            os._exit(self.exit_code)
        if self.hang:
            hang, self.hang = self.hang, 0.0
            time.sleep(hang)
        if self.step_delay or self.token_delay:
            time.sleep(self.step_delay + self.token_delay * tokens)
        if self.failing_steps:
            self.failing_steps -= 1
            raise RuntimeError("injected fault")


def enabled() -> bool:
    """Whether this (engine) process accepts faults."""
    return os.environ.get(ENABLE) == "1"


def inject(engine: "EngineClient", fault: Fault) -> None:
    """Send `fault` to the engine behind this client (it is dropped unless the engine accepts faults)."""
    engine.loop.call_soon_threadsafe(engine.transport.send, fault)
