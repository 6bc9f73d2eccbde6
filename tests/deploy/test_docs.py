"""docs/deploy.md's settings table matches app.config.Settings: every field, no extra, same default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.config import Settings
from app.engine import faults

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
PREFIX = Settings.model_config.get("env_prefix", "")


def env_name(name: str, field) -> str:
    alias = field.validation_alias if isinstance(field.validation_alias, str) else None
    return (alias or f"{PREFIX}{name}").upper()


def settings_table() -> dict[str, str]:
    """{env var: default cell} from the table under the '## Settings' heading."""
    text = DOC.read_text()
    match = re.search(r"^## Settings\b.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, "docs/deploy.md has no '## Settings' section"
    rows = {}
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not line.lstrip().startswith("|"):
            continue
        name = cells[0].strip("`")
        if not name.startswith(PREFIX):
            continue  # header or separator row
        assert name not in rows, f"{name} is listed twice"
        rows[name] = cells[1]
    return rows


def parse_default(cell: str):
    """'unset ...' is None, 'empty ...' an empty list; otherwise the first `code span` is the value."""
    word = cell.split()[0].lower() if cell.split() else ""
    if word in ("unset", "empty"):
        return None if word == "unset" else []
    code = re.search(r"`([^`]*)`", cell)
    assert code, f"default cell {cell!r}: use `value`, 'unset ...' or 'empty ...'"
    return code.group(1)


def same_default(documented, actual) -> bool:
    if actual is None or documented is None:
        return documented is None and actual is None
    if isinstance(actual, (list, dict)):  # documented as "empty ..."
        return documented == [] and not actual
    if isinstance(actual, bool):
        return str(documented).lower() == str(actual).lower()
    if isinstance(actual, (int, float)):
        try:
            return float(documented) == float(actual)
        except ValueError:
            return False
    return str(documented) == str(actual)


def test_table_lists_exactly_the_settings_fields():
    documented = set(settings_table())
    fields = {env_name(n, f) for n, f in Settings.model_fields.items()}
    assert fields - documented == set(), "Settings fields missing from docs/deploy.md"
    assert documented - fields == set(), "docs/deploy.md lists settings that do not exist"


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_documented_default_matches(name):
    field = Settings.model_fields[name]
    actual = field.default_factory() if field.default_factory else field.default
    cell = settings_table()[env_name(name, field)]
    assert same_default(parse_default(cell), actual), \
        f"{env_name(name, field)}: docs say {cell!r}, Settings has {actual!r}"


def test_every_gpt2_variable_in_the_doc_exists():
    fields = {env_name(n, f) for n, f in Settings.model_fields.items()}
    fields.add(faults.ENABLE)  # the test-only switch, which the doc names as not a setting
    mentioned = set(re.findall(rf"\b{PREFIX}[A-Z0-9_]*[A-Z0-9]\b", DOC.read_text()))
    assert mentioned - fields == set(), "docs/deploy.md mentions unknown settings"
