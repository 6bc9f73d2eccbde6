"""The `gpt2-serve` command: serve, download, calibrate, and the commands registered below."""

import logging

import typer

from app.calibrate import calibrate
from app.config import Settings
from app.logs import configure_logging

cli = typer.Typer(help="gpt2-serve: GPT-2 completions and scoring behind one continuous-batching engine. "
                  "Every setting is a GPT2_* environment variable (see docs/deploy.md).", no_args_is_help=True)
log = logging.getLogger("app.cli")


@cli.command()
def serve() -> None:
    """Run the HTTP service (GPT2_HOST:GPT2_PORT) until SIGTERM, then drain and exit."""
    from app.server import serve as run_server

    settings = Settings()
    configure_logging(settings)
    run_server(settings)


@cli.command()
def download() -> None:
    """Fetch GPT2_MODEL's weights and tokenizer into the Hugging Face cache (e.g. to bake an image)."""
    from app.model.loader import model_dir

    settings = Settings()
    configure_logging(settings)
    print(model_dir(settings.model))


cli.command()(calibrate)
# more commands (train, train-detector, bench) are registered here, one line each
from app.detect.cli import train_detector  # noqa: E402  (kept beside its registration)

cli.command("train-detector")(train_detector)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
