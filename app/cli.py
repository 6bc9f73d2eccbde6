"""The `gpt2-serve` command: serve, download."""

import asyncio
import logging
import signal
import sys
import time

import typer
import uvicorn

from app.calibrate import calibrate
from app.config import Settings
from app.logs import configure_logging

cli = typer.Typer(help="gpt2-serve: GPT-2 completions and scoring behind one continuous-batching engine. "
                  "Every setting is a GPT2_* environment variable (see docs/deploy.md).", no_args_is_help=True)
log = logging.getLogger("app.cli")


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


@cli.command()
def serve() -> None:
    """Run the HTTP service (GPT2_HOST:GPT2_PORT) until SIGTERM, then drain and exit."""
    from app.main import create_app

    settings = Settings()
    configure_logging(settings)
    app = create_app(settings)
    state = app.state.gpt2
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on")
    server = DrainingServer(config, state)
    state.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run()
    if state.load_error is not None:
        sys.exit(1)


@cli.command()
def download() -> None:
    """Fetch GPT2_MODEL's weights and tokenizer into the Hugging Face cache (e.g. to bake an image)."""
    from app.model.loader import model_dir

    settings = Settings()
    configure_logging(settings)
    print(model_dir(settings.model))


cli.command()(calibrate)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
