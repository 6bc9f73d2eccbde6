"""Released text never splits a UTF-8 character nor shows the start of a stop string."""

import pytest

from app.api.choice_text import ChoiceText
from app.model.loader import PACKAGED_TOKENIZER
from app.model.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(PACKAGED_TOKENIZER)


def feed(tok, text: str, stop: list[str]) -> tuple[list[str], ChoiceText]:
    choice = ChoiceText(tok, stop)
    pieces = []
    for token_id in tok.encode(text):
        choice.add(token_id, None)
        pieces.append(choice.take()[0])
        if choice.stopped:
            break
    pieces.append(choice.take(final=True)[0])
    return pieces, choice


def test_multibyte_characters_are_never_split(tok):
    text = "日本語 🤗 naïve café 👩‍👩‍👧"
    assert any(tok.token_str(t).startswith("bytes:") for t in tok.encode(text))  # partial tokens exist
    pieces, _ = feed(tok, text, [])
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_a_stop_string_across_tokens_cuts_the_text_and_is_never_shown(tok):
    text = "Hello world, and goodbye"
    assert len(tok.encode("Hello world")) == 2
    pieces, choice = feed(tok, text, ["lo wor"])
    assert "".join(pieces) == "Hel" and choice.stopped
    assert not any("lo" in p for p in pieces)


def test_a_partial_stop_prefix_is_held_then_released(tok):
    choice = ChoiceText(tok, ["world peace"])
    for token_id in tok.encode("Hello world"):
        choice.add(token_id, None)
    assert choice.take()[0] == "Hello "  # "world" could begin the stop string
    for token_id in tok.encode(" order"):
        choice.add(token_id, None)
    assert choice.take()[0] == "world order" and not choice.stopped


def test_stop_strings_in_emoji_text(tok):
    pieces, choice = feed(tok, "ok 🤗🤗 fine", ["🤗 f"])
    assert "".join(pieces) == "ok 🤗" and choice.stopped


def test_eos_adds_no_text_but_keeps_its_logprob_entry(tok):
    choice = ChoiceText(tok, [])
    for token_id in [*tok.encode("Hi"), tok.eos_token_id]:
        choice.add(token_id, None)
    text, entries = choice.take(final=True)
    assert text == "Hi" and [e.token for e in entries] == ["Hi", "<|endoftext|>"]
    assert [e.offset for e in entries] == [0, 2]
