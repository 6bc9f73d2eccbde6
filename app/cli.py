"""The `gpt2-serve` command: serve, download, calibrate, and the commands registered below."""

import logging
import sys

import typer
from pydantic import ValidationError

from app.config import Settings
from app.connection import connect
from app.detect.calibrate import calibrate
from app.logs import configure_logging

cli = typer.Typer(help="gpt2-serve: GPT-2 completions and scoring behind one continuous-batching engine. "
                  "Every setting is a GPT2_* environment variable (see docs/deploy.md).", no_args_is_help=True)
log = logging.getLogger("app.cli")


@cli.callback()
def share_connection(ctx: typer.Context) -> None:
    ctx.obj = connect  # how calibrate and train-detector reach a server, so that app/detect never imports the app


def load_settings() -> Settings:
    """The GPT2_* settings, or a one-line error per bad one and exit 2."""
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "GPT2_" + "_".join(str(p) for p in error["loc"][:1]).upper()
            typer.echo(f"gpt2-serve: invalid setting {name}: {error['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None


@cli.command()
def serve() -> None:
    """Run the HTTP service (GPT2_HOST:GPT2_PORT) until SIGTERM, then drain and exit."""
    from app.server import serve as run_server

    settings = load_settings()
    configure_logging(settings)
    run_server(settings)


@cli.command()
def download() -> None:
    """Fetch GPT2_MODEL's weights and tokenizer into the Hugging Face cache (e.g. to bake an image)."""
    from app.model.loader import model_dir

    settings = load_settings()
    configure_logging(settings)
    print(model_dir(settings.model))


cli.command()(calibrate)
# more commands (train, train-detector, bench) are registered here, one line each
from app.train.cli import train  # noqa: E402  (light: the training stack loads when a run starts)

cli.command()(train)

from app.detect.cli import train_detector  # noqa: E402

cli.command("train-detector")(train_detector)


# top-level modules that only the `train` extra installs (pip install 'gpt2-serve[train]')
EXTRAS = {"datasets": "train", "accelerate": "train", "sklearn": "train", "matplotlib": "train"}


def main() -> None:
    """The console script: a command that needs an extra that is not installed says so in one line."""
    try:
        cli()
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"gpt2-serve: this command needs the '{extra}' extra (the module {exc.name!r} is missing): "
              f"pip install 'gpt2-serve[{extra}]'", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
