"""Running the HTTP service: uvicorn with a graceful drain on SIGTERM."""

import asyncio
import logging
import signal
import sys
import time

import uvicorn

from app.config import Settings

log = logging.getLogger("app.server")


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains: /readyz turns 503, new requests get
    503, admitted ones (streams included) finish within GPT2_DRAIN_TIMEOUT, then the server exits.
    A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, app_state):
        super().__init__(config)
        self.app_state = app_state
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self.app_state.draining or self.loop is None or self.app_state.service is None:
            return super().handle_exit(sig, frame)
        self.app_state.draining = True
        log.info("signal %s: draining (up to %.0f s) before exit", signal.Signals(sig).name,
                 self.app_state.settings.drain_timeout)
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._drain()))

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.app_state.settings.drain_timeout
        engine = self.app_state.service.engine
        while (self.app_state.in_flight or engine.num_unfinished) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.app_state.in_flight or engine.num_unfinished:
            log.warning("drain timeout: %d requests still running are cut off", self.app_state.in_flight)
        else:
            log.info("drained: every admitted request has finished")
        self.should_exit = True


def serve(settings: Settings) -> None:
    """Serve until SIGTERM, then drain; exit non-zero if the model could not be loaded."""
    from app.main import create_app

    app = create_app(settings)
    state = app.state.gpt2
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on")
    server = DrainingServer(config, state)
    state.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run()
    if state.load_error is not None:
        sys.exit(1)
