"""Fixtures of the judge's tests: real English "human" texts (paragraphs of this repository's
docs) and a live server with the tiny random model (tests/integration/conftest.py)."""

from pathlib import Path

import pytest

from tests.integration.conftest import start_server

ROOT = Path(__file__).resolve().parents[2]


def paragraphs(min_words: int = 25) -> list[str]:
    """Prose paragraphs of README.md and docs/*.md, one line each (tables, code and lists left out)."""
    texts = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in path.read_text(encoding="utf-8").split("\n\n"):
            text = " ".join(block.split())
            if len(text.split()) >= min_words and not text.startswith(("|", "```", "#", "-", "<", ">")):
                texts.append(text)
    return texts


@pytest.fixture(scope="session")
def human_file(tmp_path_factory) -> Path:
    texts = paragraphs()
    assert len(texts) >= 30  # the tests need real prose to train on
    path = tmp_path_factory.mktemp("human") / "human.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def live(tiny_model_dir):
    # max_request_share 1: some tests score every held-out text in one call (more than half the queue)
    server = start_server(model=tiny_model_dir, served_model_name="tiny-gpt2", max_request_share=1.0)
    yield server
    server.stop()
