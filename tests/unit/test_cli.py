"""`gpt2-serve serve`'s flags: one per Settings field, grouped by section in --help, parsed like the
GPT2_* variables, a flag over its variable over the default, and a bad value as one line (exit 2)."""

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings

SECTIONS = [base for base in Settings.__bases__ if base.model_fields]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@pytest.fixture
def served(monkeypatch) -> list[Settings]:
    """The Settings each `serve` would run with (nothing is served, logging is left alone)."""
    runs: list[Settings] = []
    monkeypatch.setattr("app.server.serve", runs.append)
    monkeypatch.setattr("app.cli.configure_logging", lambda settings: None)
    for name in Settings.model_fields:
        monkeypatch.delenv(f"GPT2_{name.upper()}", raising=False)
    return runs


def serve(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["serve", *args], env=env)


def test_every_settings_field_is_a_flag_in_the_group_of_its_section():
    options = {param.name: param for param in get_command(cli).commands["serve"].params}
    assert sum(len(section.model_fields) for section in SECTIONS) == len(Settings.model_fields)
    for section in SECTIONS:
        for name in section.model_fields:
            assert options[name].opts == [flag(name)]
            assert options[name].rich_help_panel == section.__doc__


@pytest.mark.parametrize("columns", [80, 120])
def test_help_lists_every_group_and_flag_within_the_terminal(columns):
    result = CliRunner().invoke(cli, ["serve", "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0
    assert "[MODEL]" in result.output
    for section in SECTIONS:
        assert section.__doc__ in result.output
    for name in Settings.model_fields:
        assert f" {flag(name)} " in result.output  # whole, not cut short
    assert "…" not in result.output
    assert max(len(line) for line in result.output.splitlines()) <= columns


def test_a_flag_wins_over_its_variable_and_an_unset_flag_leaves_the_variable(served):
    env = {"GPT2_MODEL": "from-env", "GPT2_PORT": "7000", "GPT2_MAX_BATCH_SIZE": "8", "GPT2_UI": "false"}
    assert serve("from-flag", "--port", "9000", "--ui", "true", env=env).exit_code == 0
    assert serve(env=env).exit_code == 0
    assert serve("--model", "from-flag", env=env).exit_code == 0
    flagged, plain, by_option = served
    assert (flagged.model, flagged.port, flagged.ui, flagged.max_batch_size) == ("from-flag", 9000, True, 8)
    assert (plain.model, plain.port, plain.ui, plain.max_batch_size) == ("from-env", 7000, False, 8)
    assert by_option.model == "from-flag"
    assert flagged.max_queue == plain.max_queue == Settings.model_fields["max_queue"].default  # neither given


def test_a_flag_fixes_a_bad_variable(served):
    assert serve("--max-batch-size", "4", env={"GPT2_MAX_BATCH_SIZE": "0"}).exit_code == 0
    assert served[0].max_batch_size == 4


@pytest.mark.parametrize("name, value", [
    ("api_keys", "alpha,batch:beta"), ("key_class_weights", "batch=2,interactive=4"), ("prefix_caching", "false"),
    ("log_prompts", "1"), ("max_model_len", "64"), ("load_format", "dummy"), ("request_timeout", "1.5"),
    ("served_model_name", "mine"), ("max_request_share", "0.25"),
])
def test_a_flag_means_what_its_variable_means(served, monkeypatch, name, value):
    assert serve(flag(name), value).exit_code == 0
    monkeypatch.setenv(f"GPT2_{name.upper()}", value)
    assert served[0] == Settings()
    assert getattr(served[0], name) != Settings.model_fields[name].get_default(call_default_factory=True)


@pytest.mark.parametrize("name, value", [
    ("max_batch_size", "0"), ("max_batch_size", "many"), ("load_format", "bogus"), ("api_keys", ""),
    ("prefix_caching", "maybe"), ("key_class_weights", "batch=0"),
])
def test_a_bad_flag_is_one_line_and_exit_2(served, name, value):
    result = serve(flag(name), value)
    assert result.exit_code == 2 and not served
    assert result.output.startswith(f"gpt2-serve: invalid setting {flag(name)}: ")
    assert len(result.output.strip().splitlines()) == 1


def test_a_bad_variable_is_named_as_the_variable(served):
    result = serve(env={"GPT2_MAX_BATCH_SIZE": "0"})
    assert result.exit_code == 2 and not served
    assert result.output.startswith("gpt2-serve: invalid setting GPT2_MAX_BATCH_SIZE: ")


def test_two_different_models_are_refused(served):
    result = serve("gpt2", "--model", "gpt2-medium")
    assert result.exit_code == 2 and not served
    assert "give the model once" in result.output
    assert serve("gpt2", "--model", "gpt2").exit_code == 0 and served[0].model == "gpt2"
