"""Where a judge stops working, measured on its held-out texts: shorter texts, and machine texts
with some of their words replaced (a crude stand-in for human editing; a real paraphraser would
rewrite more cleverly, so treat the figures as a best case for the judge)."""

import random

import numpy as np

from app.detect.data import cut, score_texts
from app.detect.features import from_result
from app.detect.judge import Judge
from app.detect.report import at_threshold, separation

LENGTHS = (16, 32, 64, 128)
EDIT_SHARES = (0.1, 0.25, 0.5)


def judged(client, judge: Judge, texts: list[str], batch_size: int) -> np.ndarray:
    """The judge's machine probability for each text (NaN where nothing was scored)."""
    results = score_texts(client, texts, batch_size, return_tokens=True)
    rows = [from_result(r) for r in results]
    return np.array([float(judge.predict_proba(x)) if x is not None else np.nan for x in rows])


def _row(p: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    keep = ~np.isnan(p)
    p, y = p[keep], y[keep]
    verdict = at_threshold(p, y, threshold)
    return {**separation(p[y == 1], p[y == 0]), "verdict_tpr": verdict["tpr"], "verdict_fpr": verdict["fpr"]}


def short_texts(client, judge: Judge, texts: list[str], labels: np.ndarray, batch_size: int) -> dict:
    """The judge on the last N tokens of each held-out text that has N, for each N in LENGTHS (the
    last: a generated text starts with its human prompt)."""
    rows = {}
    for n in LENGTHS:
        kept = cut(client, texts, n, n, last=True)
        if kept:
            p = judged(client, judge, [text for _, text, _ in kept], batch_size)
            rows[f"last {n} tokens"] = _row(p, labels[[i for i, _, _ in kept]], judge.threshold)
    return rows


def edited(judge: Judge, client, human: list[str], machine: list[str], batch_size: int, seed: int = 0) -> dict:
    """The judge on held-out machine texts with a share of their words swapped for words of the
    held-out human texts, against the unchanged human texts."""
    rng = random.Random(seed)
    vocabulary = [w for text in human for w in text.split()]
    p_human = judged(client, judge, human, batch_size)
    rows = {}
    for share in (0.0, *EDIT_SHARES):
        changed = []
        for text in machine:
            words = text.split()
            for i in rng.sample(range(len(words)), k=round(share * len(words))):
                words[i] = rng.choice(vocabulary)
            changed.append(" ".join(words))
        p_machine = judged(client, judge, changed, batch_size)
        p = np.concatenate([p_human, p_machine])
        y = np.r_[np.zeros(len(p_human)), np.ones(len(p_machine))]
        label = f"{share:.0%} of words replaced" + (" (spaces normalised)" if share == 0 else "")
        rows[label] = _row(p, y, judge.threshold)
    return rows
