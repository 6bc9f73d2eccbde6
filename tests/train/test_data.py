"""Reading, tokenizing and packing the training text, and the unigram baseline (no model)."""

import json
import math

import datasets
import pytest
from transformers import GPT2TokenizerFast

from app.model.loader import PACKAGED_TOKENIZER
from app.train.data import load_documents, to_blocks, unigram_perplexity
from app.train.spec import TrainError, parse_duration

EOS = 50256


@pytest.fixture(autouse=True)
def datasets_cache_in_tmp(monkeypatch, datasets_cache):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)


@pytest.fixture(scope="module")
def tokenizer():
    return GPT2TokenizerFast.from_pretrained(PACKAGED_TOKENIZER)


def test_eos_follows_every_document_and_blocks_are_packed(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("The first document.\nIts second line.")
    (tmp_path / "b.md").write_text("The second one.")
    (tmp_path / "skip.bin").write_text("not text")  # not a text suffix: a directory read skips it
    docs = load_documents([tmp_path])
    assert docs["text"] == ["The first document.\nIts second line.", "The second one."]
    stream = (tokenizer.encode("The first document.\nIts second line.") + [EOS]
              + tokenizer.encode("The second one.") + [EOS])
    blocks = to_blocks(docs, tokenizer, block_size=4)
    assert all(len(b) == 4 for b in blocks["input_ids"]) and blocks["labels"] == blocks["input_ids"]
    packed = [t for b in blocks["input_ids"] for t in b]
    assert packed == stream[: len(stream) // 4 * 4]


def test_jsonl_and_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "One.", "id": 1}) + "\n\n"
                                      + json.dumps({"body": "Two.", "id": 2}) + "\n")
    assert load_documents([tmp_path / "a.jsonl"], text_field="body")["text"] == ["One.", "Two."]
    (tmp_path / "lines.txt").write_text("first\n\n   \nsecond\n")
    assert load_documents([tmp_path / "lines.txt"], unit="line")["text"] == ["first", "second"]


def test_paragraphs(tmp_path):
    (tmp_path / "p.txt").write_text("One para\nstill one.\n\nTwo.\n\nThree.\n")
    assert load_documents([tmp_path / "p.txt"], unit="paragraph")["text"] == ["One para\nstill one.", "Two.",
                                                                               "Three.\n"]


def test_all_blank_documents_are_refused(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "  "}) + "\n")
    with pytest.raises(TrainError, match="every document is empty"):
        load_documents([tmp_path / "a.jsonl"])


def test_unigram_baseline_by_hand():
    vocab = 5
    train = datasets.Dataset.from_dict({"input_ids": [[0, 1, 1, 2]]})
    held_out = datasets.Dataset.from_dict({"input_ids": [[4, 1, 3]]})  # the targets: 1 and 3 (not the first)
    # add-one counts: 0:1+1, 1:2+1, 2:1+1, 3:0+1, 4:0+1 over 4 + 5
    expected = math.exp(-(math.log(3 / 9) + math.log(1 / 9)) / 2)
    assert unigram_perplexity(train, held_out, vocab) == pytest.approx(expected)


@pytest.mark.parametrize(("text", "seconds"), [("900", 900), ("90s", 90), ("15m", 900), ("1h30m", 5400),
                                               ("0.5h", 1800)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "15 minutes", "0", ""])
def test_bad_durations(text):
    with pytest.raises(TrainError):
        parse_duration(text)
