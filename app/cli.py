"""The `gpt2-serve` command: serve, download, calibrate, and the commands registered below.

`serve` takes the model as an optional argument and every Settings field as a flag, generated from
Settings (one option per field, in its section's group of `--help`): `gpt2-serve serve gpt2
--port 8000 --max-batch-size 64`. A flag wins over its GPT2_* variable, which wins over the default."""

import inspect
import logging
import sys
from collections.abc import Callable
from typing import Annotated, Literal, get_args, get_origin

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from rich.markup import escape

from app.config import Settings
from app.connection import connect
from app.detect.calibrate import calibrate
from app.logs import configure_logging

cli = typer.Typer(help="gpt2-serve: GPT-2 completions and scoring behind one continuous-batching engine. "
                  "Every setting is a GPT2_* environment variable and a flag of `serve` (see docs/deploy.md).",
                  no_args_is_help=True)
log = logging.getLogger("app.cli")


@cli.callback()
def share_connection(ctx: typer.Context) -> None:
    ctx.obj = connect  # how calibrate and train-detector reach a server, so that app/detect never imports the app


def load_settings(flags: dict[str, object] | None = None) -> Settings:
    """The settings (flags over GPT2_* variables over defaults), or a one-line error per bad one and exit 2."""
    flags = flags or {}
    try:
        return Settings(**flags)
    except ValidationError as exc:
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            name = "--" + field.replace("_", "-") if field in flags else "GPT2_" + field.upper()
            typer.echo(f"gpt2-serve: invalid setting {name}: {error['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None


def settings_command(command: Callable[[Settings], None]) -> Callable[..., None]:
    """`command(settings)` as a typer command taking an optional MODEL argument and one --flag per
    Settings field, in the group of the section (a base class of Settings) that declares it. The flags
    given on the command line reach Settings as the strings typed, validated there like the variables."""

    def run(ctx: typer.Context, model_tag: str | None = None, **flags: object) -> None:
        given = {name: value for name, value in flags.items()  # (by name: typer may bring its own click)
                 if ctx.get_parameter_source(name).name == "COMMANDLINE"}
        if model_tag is not None and given.setdefault("model", model_tag) != model_tag:
            raise typer.BadParameter("give the model once: as the argument or as --model", param_hint="MODEL")
        command(load_settings(given))

    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    model = inspect.Parameter("model_tag", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=Annotated[
        str | None, typer.Argument(metavar="MODEL", help="The model, as --model (e.g. gpt2, or a directory).",
                                   show_default=False)])
    flags = [option(name, field, section.__doc__) for section in Settings.__bases__
             for name, field in section.model_fields.items()]
    run.__signature__ = inspect.Signature([context, model, *flags])
    run.__doc__ = command.__doc__
    return run


def option(name: str, field: FieldInfo, group: str) -> inspect.Parameter:
    """The --flag of one Settings field: its description, default and group. A bool takes true or
    false, as its variable does (a --flag/--no-flag pair would need a column of its own in --help)."""
    options = get_args(field.annotation)  # (int | None -> int)
    kind = next(t for t in options if t is not type(None)) if type(None) in options else field.annotation
    default = field.get_default(call_default_factory=True)
    shown = None if default in (None, [], {}) else str(default).lower() if isinstance(default, bool) else str(default)
    flag = typer.Option("--" + name.replace("_", "-"), metavar=metavar(kind), help=escape(field.description),
                        rich_help_panel=group)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=shown,
                             annotation=Annotated[str | None, flag])


def metavar(kind: object) -> str:
    """A flag's value as --help shows it: the choices, or the type."""
    if get_origin(kind) is Literal:
        return "[" + "|".join(get_args(kind)) + "]"
    names = {bool: "[true|false]", int: "INTEGER", float: "FLOAT", list: "A,B,...", dict: "K=V,..."}
    return names.get(get_origin(kind) or kind, "TEXT")


@cli.command("serve")
@settings_command
def serve(settings: Settings) -> None:
    """Run the HTTP service (--host:--port) until SIGTERM, then drain and exit.

    Each flag is also a variable (--max-batch-size: GPT2_MAX_BATCH_SIZE; docs/deploy.md).
    A flag given wins over its variable, a variable over the default."""
    from app.server import serve as run_server

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
