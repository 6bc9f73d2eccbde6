"""The statistics that standardise /v1/embeddings: the per-dimension mean and standard deviation of
every pooling of every layer over a reference corpus (GPT2_EMBEDDING_REFERENCE). The engine
computes them at start-up, embedding the corpus as requests would be embedded, and saves them
beside the model (`embedding-stats.json`); later starts with the same model and corpus read them.

Why: raw GPT-2 hidden states are anisotropic. A few dimensions with large values dominate them, so
any two texts' pooled vectors have a cosine similarity near 1. Subtracting the corpus mean and
dividing by its standard deviation, dimension by dimension, removes most of that (Timkey & van
Schijndel, 2021). Runs in the engine process only (engine/process.py).
"""

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.config import Settings
from app.detect.data import collect_texts
from app.engine.readout import Statistics
from app.model.tokenizer import Tokenizer

log = logging.getLogger(__name__)

STATS_FILE = "embedding-stats.json"


def stats_path(model: str) -> Path:
    """Beside the model: in GPT2_MODEL's directory when it is one, else in the user's cache."""
    if Path(model).is_dir():
        return Path(model) / STATS_FILE
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "gpt2-serve" / "embedding-stats" / f"{model.replace('/', '--')}.json"


def reference_prompts(path: str, tokenizer: Tokenizer, max_len: int) -> list[list[int]]:
    """The corpus's texts as token ids, a text longer than the model's context cut into pieces."""
    prompts = []
    for ids in tokenizer.encode_many(collect_texts([Path(path)])):
        prompts += [ids[i : i + max_len] for i in range(0, len(ids), max_len)]
    return prompts


def load_or_measure(settings: Settings, tokenizer: Tokenizer, max_len: int, identity: dict,
                    measure: Callable[[list[list[int]]], Statistics]) -> tuple[Statistics, str]:
    """The statistics for this model (`identity`) and corpus, read from the saved file when it was
    made from the same, else measured (`measure`: the engine's readout.reference_statistics) and
    saved. Returns them and a description of the corpus."""
    prompts = reference_prompts(settings.embedding_reference, tokenizer, max_len)
    digest = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()
    key = {"model": identity, "reference": {"path": str(Path(settings.embedding_reference).resolve()),
                                            "sha256": digest, "pieces": len(prompts),
                                            "tokens": sum(map(len, prompts))}}
    about = f"{settings.embedding_reference} ({len(prompts)} pieces, {key['reference']['tokens']} tokens)"
    path = stats_path(settings.model)
    try:
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            log.info("embedding statistics of %s read from %s", about, path)
            return {(pooling, layer): (torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))
                    for pooling, layer, mean, std in saved["statistics"]}, about
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, unreadable or another version: measure them
    start = time.monotonic()
    stats = measure(prompts)
    log.info("embedding statistics of %s measured in %.1f s", about, time.monotonic() - start)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "statistics": [
            [pooling, layer, mean.tolist(), std.tolist()] for (pooling, layer), (mean, std) in stats.items()]}))
        log.info("embedding statistics saved to %s", path)
    except OSError as exc:
        log.warning("cannot save the embedding statistics to %s (%s); they are measured again at every start",
                    path, exc)
    return stats, about
