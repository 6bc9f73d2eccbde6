"""Training data: files -> documents -> tokens with EOS after each document -> packed blocks.

Text files are read with `datasets`' text builder (a whole file, a paragraph or a line is one
document: --unit), JSONL files with its json builder (one object per line, --text-field). Every
document ends with <|endoftext|>, so the model sees document boundaries as GPT-2 did; the token
stream is then cut into blocks of --block-size tokens (run_clm's packing: no padding, the last
partial block of each map batch is dropped). The held-out set is --eval-data, or a seeded random
--eval-fraction of the blocks.
"""

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.train.spec import TrainError, list_files


@dataclass
class Blocks:
    train: object  # datasets.Dataset of {"input_ids", "labels"}, each a list of block_size ids
    eval: object
    documents: int
    block_size: int

    @property
    def train_tokens(self) -> int:
        return len(self.train) * self.block_size

    @property
    def eval_tokens(self) -> int:
        return len(self.eval) * self.block_size


def load_documents(paths: list[Path], text_field: str = "text", unit: str = "document"):
    """A datasets.Dataset with one column, "text": the non-blank documents of `paths`."""
    import datasets

    text_files, jsonl_files = list_files(paths)
    parts = []
    if text_files:
        try:
            parts.append(datasets.load_dataset("text", data_files=text_files, sample_by=unit, split="train"))
        except Exception as exc:
            raise TrainError(f"cannot read {', '.join(text_files)}: {root_cause(exc)}") from exc
    if jsonl_files:
        parts.append(load_jsonl(jsonl_files, text_field))
    docs = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    docs = docs.filter(non_blank, batched=True)
    if len(docs) == 0:
        raise TrainError(f"no text in {', '.join(str(p) for p in paths)}: every document is empty")
    return docs


def load_jsonl(files: list[str], text_field: str):
    import datasets

    try:
        with quiet(datasets):  # it logs its parse error; ours below says where
            docs = datasets.load_dataset("json", data_files=files, split="train")
    except Exception as exc:
        raise TrainError(find_bad_json_line(files, text_field) or f"cannot read {', '.join(files)}: "
                         f"{root_cause(exc)}") from exc
    if text_field not in docs.column_names or docs.features[text_field] != datasets.Value("string"):
        raise TrainError(find_bad_json_line(files, text_field) or f"{', '.join(files)}: no string field "
                         f"{text_field!r} (pass --text-field)")
    if None in docs[text_field]:
        raise TrainError(find_bad_json_line(files, text_field) or f"a record lacks {text_field!r}")
    return docs.select_columns([text_field]).rename_column(text_field, "text") if text_field != "text" \
        else docs.select_columns(["text"])


@contextmanager
def quiet(datasets):
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def find_bad_json_line(files: list[str], text_field: str) -> str | None:
    """The first line that is not a JSON object with a string `text_field`, as an error message.
    Read only after the fast reader failed, to say where."""
    for file in files:
        with open(file, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as exc:
                    return f"{file} line {number}: not valid JSON ({exc.msg}, column {exc.colno})"
                if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                    return f"{file} line {number}: not a JSON object with a string {text_field!r} field"
    return None


def non_blank(batch: dict) -> list[bool]:
    return [bool(text and text.strip()) for text in batch["text"]]


def root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def tokenize(batch: dict, tokenizer, eos_id: int) -> dict:
    return {"input_ids": [ids + [eos_id] for ids in tokenizer(batch["text"])["input_ids"]]}


def pack(batch: dict, block_size: int) -> dict:
    """Concatenate the documents of a map batch and cut the stream into whole blocks."""
    stream = [token for ids in batch["input_ids"] for token in ids]
    usable = len(stream) // block_size * block_size
    blocks = [stream[i:i + block_size] for i in range(0, usable, block_size)]
    return {"input_ids": blocks, "labels": [list(b) for b in blocks]}  # the model shifts the labels


def to_blocks(docs, tokenizer, block_size: int):
    ids = docs.map(tokenize, batched=True, remove_columns=docs.column_names,
                   fn_kwargs={"tokenizer": tokenizer, "eos_id": tokenizer.eos_token_id})
    return ids.map(pack, batched=True, batch_size=1000, remove_columns=ids.column_names,
                   fn_kwargs={"block_size": block_size})


def prepare(spec, tokenizer, block_size: int) -> Blocks:
    """Train and held-out blocks for `spec` (a TrainSpec)."""
    docs = load_documents(spec.data, spec.text_field, spec.unit)
    blocks = to_blocks(docs, tokenizer, block_size)
    if spec.eval_data:
        train = blocks
        held_out = to_blocks(load_documents(spec.eval_data, spec.text_field, spec.unit), tokenizer, block_size)
        if len(held_out) == 0:
            raise TrainError(f"--eval-data holds fewer than {block_size} tokens, not one block of --block-size")
    else:
        if len(blocks) < 2:
            raise TrainError(f"too little text: {len(blocks)} block(s) of {block_size} tokens; at least 2 are "
                             f"needed (one to train on, one to hold out). Add text or lower --block-size")
        split = blocks.train_test_split(test_size=max(1, round(len(blocks) * spec.eval_fraction)), seed=spec.seed)
        train, held_out = split["train"], split["test"]
    if len(train) == 0:
        raise TrainError(f"too little text: fewer than {block_size} tokens, not one block of --block-size")
    return Blocks(train, held_out, len(docs), block_size)


def unigram_perplexity(train, held_out, vocab_size: int) -> float:
    """Perplexity of an add-one smoothed unigram model of the training tokens on the held-out
    targets (every token of a block but the first, as the model is scored): the baseline."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for batch in train.with_format("numpy").iter(batch_size=1024):
        counts += np.bincount(batch["input_ids"].ravel(), minlength=vocab_size)[:vocab_size]
    log_p = np.log((counts + 1) / (counts.sum() + vocab_size))
    nll, n = 0.0, 0
    for batch in held_out.with_format("numpy").iter(batch_size=1024):
        targets = batch["input_ids"][:, 1:]
        nll -= float(log_p[targets].sum())
        n += targets.size
    return math.exp(nll / n)
