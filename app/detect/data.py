"""Texts from files and their scores through the public HTTP API, for `calibrate` and for the
judge's training data: human texts from files, machine texts from files or sampled by the served
model itself. `client` is whatever the command line handed the command (app/connection.py): an
httpx client of a server at --url, or of the same app in-process.

Human and machine texts are cut to the same token budget so that length does not give the label
away; a generated text starts with the first tokens of a human text (its prompt) and runs to that
text's length. The pair shares a `group`, so a held-out split never puts one on each side.
"""

import json
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HUMAN, MACHINE = 0, 1
TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")

# decoding settings a generator might use; `--decoding` picks among them
DECODINGS: dict[str, dict] = {
    "greedy": {"temperature": 0.0},
    "temp-0.7": {"temperature": 0.7},
    "temp-1.0": {"temperature": 1.0},
    "top-p-0.9": {"temperature": 1.0, "top_p": 0.9},
    "top-k-40": {"temperature": 1.0, "top_k": 40},
}


class DataError(ValueError):
    """Unusable training input; the message names the file and says what is wrong."""


@dataclass
class Example:
    text: str
    label: int  # HUMAN or MACHINE
    source: str  # "human", "file" (from --machine) or the decoding setting that generated it
    group: int  # examples sharing a group stay on the same side of the split


def read_texts(path: Path, field: str = "text") -> list[str]:
    """One text per line; or, for a .jsonl/.ndjson file, one JSON string or object (its `field`)
    per line. Blank lines are skipped."""
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if not jsonl:
            texts.append(line)
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc})") from exc
        if isinstance(value, dict):
            if field not in value:
                raise ValueError(f"{path}:{number}: no {field!r} key in the JSON object")
            value = value[field]
        if not isinstance(value, str):
            raise ValueError(f"{path}:{number}: expected a string or an object with {field!r}")
        texts.append(value)
    return texts


def collect_texts(paths: list[Path], field: str = "text") -> list[str]:
    """Texts from files and directories: a .jsonl/.ndjson file holds one JSON string or object (its
    `field`) per line, any other file one text per line; in a directory (searched recursively) each
    .txt/.md/.text file is ONE text (a document) and each .jsonl/.ndjson file is read per line."""
    texts = []
    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in
                           TEXT_SUFFIXES + JSONL_SUFFIXES)
            for file in files:
                if file.suffix.lower() in JSONL_SUFFIXES:
                    texts += _read(file, field)
                else:
                    text = _decode(file).strip()
                    texts += [text] if text else []
        else:
            texts += _read(path, field)
    return texts


def _decode(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({exc})") from exc


def _read(path: Path, field: str) -> list[str]:
    _decode(path)  # a clear error for binary or unreadable files
    try:
        return [t for t in read_texts(path, field) if t.strip()]
    except ValueError as exc:
        raise DataError(str(exc)) from exc


# --- through the API ---------------------------------------------------------------------------
def _post(client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"POST {path} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def score_texts(client, texts: list[str], batch_size: int, return_tokens: bool = False,
                progress: Callable[[int], object] | None = None) -> list[dict]:
    """The /v1/score result of every text (sliding window for long ones; numbers only unless
    `return_tokens`). `progress(n)` is called after each batch of n texts."""
    results = []
    for start in range(0, len(texts), batch_size):
        body = {"input": texts[start : start + batch_size], "return_tokens": return_tokens, "window": "sliding"}
        results += _post(client, "/v1/score", body)["data"]
        if progress is not None:
            progress(len(body["input"]))
    return results


def served_model(client) -> dict:
    """The served model's card from GET /v1/models (id, root, num_parameters, max_model_len, ...)."""
    response = client.get("/v1/models")
    if response.status_code != 200:
        raise RuntimeError(f"GET /v1/models answered {response.status_code}: {response.text[:500]}")
    return response.json()["data"][0]


def cut(client, texts: list[str], max_tokens: int, min_tokens: int, last: bool = False,
        chunk: bool = False) -> list[tuple[int, str, list[int]]]:
    """(index of the text, text, token ids) of each text cut to its first (or `last`) max_tokens
    tokens, or with `chunk` of every consecutive max_tokens-token piece of it; texts (pieces)
    shorter than min_tokens are left out."""
    out = []
    for index, text in enumerate(texts):
        ids = _post(client, "/tokenize", {"prompt": text})["tokens"]
        if len(ids) <= max_tokens:
            pieces = [ids]
        elif chunk:
            pieces = [ids[start : start + max_tokens] for start in range(0, len(ids), max_tokens)]
        else:
            pieces = [ids[-max_tokens:] if last else ids[:max_tokens]]
        for piece in pieces:
            if len(piece) >= min_tokens:
                piece_text = text if piece is ids else _post(client, "/detokenize", {"tokens": piece})["prompt"]
                out.append((index, piece_text, piece))
    return out


def generate(client, human: list[tuple[int, list[int]]], count: int, decodings: list[str], prompt_tokens: int,
             seed: int, workers: int, progress: Callable[[int], object] | None = None,
             max_len: int | None = None) -> list[Example]:
    """`count` machine texts: the served model continues the first `prompt_tokens` tokens of a human
    text ((group, token ids) pairs, taken in turn, shuffled) to that text's length (at most
    `max_len`, the model's context), with the decoding settings in turn. The machine text is the
    prompt's text followed by the completion, in the human text's group."""
    rng = random.Random(seed)
    order = list(range(len(human)))
    rng.shuffle(order)
    jobs = [(order[i % len(order)], decodings[i % len(decodings)], seed + i) for i in range(count)]

    def one(job: tuple[int, str, int]) -> Example:
        which, decoding, job_seed = job
        group, ids = human[which]
        prompt = ids[:min(prompt_tokens, len(ids) - 1)]
        length = min(len(ids), max_len or len(ids)) - len(prompt)
        body = {"prompt": prompt, "max_tokens": length, "min_tokens": length, "seed": job_seed,
                **DECODINGS[decoding]}
        completion = _post(client, "/v1/completions", body)["choices"][0]["text"]
        prompt_text = _post(client, "/detokenize", {"tokens": prompt})["prompt"]
        if progress is not None:
            progress(1)
        return Example(prompt_text + completion, MACHINE, decoding, group)

    with ThreadPoolExecutor(max_workers=workers) as pool:  # the engine batches concurrent requests
        return list(pool.map(one, jobs))


def write_dataset(path: Path, examples: list[Example], test: list[bool], features: list[list[float]]) -> None:
    """The examples, their split and features, one JSON object per line (for other experiments on
    the same data, e.g. bench/detector.py)."""
    with path.open("w", encoding="utf-8") as out:
        for example, held_out, row in zip(examples, test, features, strict=True):
            out.write(json.dumps({"text": example.text, "label": example.label, "source": example.source,
                                  "group": example.group, "split": "test" if held_out else "train",
                                  "features": row}) + "\n")


def read_dataset(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
