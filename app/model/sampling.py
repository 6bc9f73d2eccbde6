"""The maths of choosing tokens, on plain tensors: filters, penalties, draws, scores.

Nothing here knows about requests or slots; app/engine/sampler.py assembles the batch and calls
these. Every function works row by row: a row's result never depends on the other rows.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# top-p first looks among this many best tokens and sorts the whole row only when they do
# not reach the requested mass (a full sort of 50k logits costs milliseconds per row)
TOP_P_CANDIDATES = 256


def keep_top_k(logits: Tensor, top_k: Tensor) -> Tensor:
    """Mask all but each row's k best logits (top_k: [B], each >= 1). Ties with the k-th stay."""
    ks = top_k.clamp(max=logits.shape[-1])
    values = logits.topk(int(ks.max()), dim=-1).values  # [B, kmax], descending
    kth = values.gather(1, (ks - 1).unsqueeze(1))
    return logits.masked_fill(logits < kth, float("-inf"))


def keep_top_p(logits: Tensor, top_p: Tensor) -> Tensor:
    """Keep the smallest set of best tokens whose probability reaches p (nucleus sampling).
    top_p: [B] in (0, 1]."""
    B, V = logits.shape
    p = top_p.unsqueeze(1).to(logits.dtype)
    probs = logits.softmax(-1)
    k = min(V, TOP_P_CANDIDATES)
    best = probs.topk(k, dim=-1).values  # [B, k] descending
    thresholds = nucleus_threshold(best, p, complete=k == V)
    for i in thresholds.isnan().nonzero()[:, 0].tolist():  # the candidates fall short of p (rare)
        row = probs[i : i + 1].sort(descending=True).values
        thresholds[i] = nucleus_threshold(row, p[i : i + 1], complete=True)[0]
    return logits.masked_fill(probs < thresholds, float("-inf"))


def nucleus_threshold(sorted_probs: Tensor, p: Tensor, complete: bool) -> Tensor:
    """sorted_probs: [B, k] descending, the whole row when `complete`. Returns [B, 1]: the
    probability of the last token kept, or NaN where these k tokens do not reach p."""
    k = sorted_probs.shape[1]
    last = ((sorted_probs.cumsum(-1) < p).sum(-1, keepdim=True)).clamp(max=k)  # the one crossing p
    threshold = sorted_probs.gather(1, last.clamp(max=k - 1))
    if complete:  # rounding can leave the total a hair under p: then keep everything
        return threshold
    return threshold.masked_fill(last == k, float("nan"))


def apply_penalties(logits: Tensor, counts: Tensor, seen: Tensor, repetition: Tensor, frequency: Tensor,
                    presence: Tensor) -> Tensor:
    """Repetition penalty (CTRL/HF style, over prompt and output tokens) and OpenAI's presence
    and frequency penalties (over output tokens). logits, counts (output occurrences): [B, V];
    seen (in the prompt or the output): [B, V] bool; the penalties: [B]."""
    rep = repetition.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    return logits - frequency.unsqueeze(1) * counts - presence.unsqueeze(1) * (counts > 0)


def draw(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF sampling: probs [B, V] (unnormalised, >= 0), u [B] uniform in [0, 1) -> [B] ids.
    Returns the first token whose cumulative probability passes u * total; it has probability > 0."""
    cdf = probs.cumsum(-1)
    index = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1), right=True)
    return index.squeeze(1).clamp_(max=probs.shape[-1] - 1)


# --- random numbers that depend on (seed, draw number) only ------------------------------------
# SplitMix64 (Steele et al., 2014): a counter-based generator, so a sequence's n-th draw is the
# same whatever else runs beside it, with no generator object per sequence to step in Python.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 values (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(streams: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """One uniform number in [0, 1) per row: the `counters`-th draw (int) of each stream (uint64,
    a mixed seed: see mix64). float64 with 53 random bits."""
    with np.errstate(over="ignore"):
        z = mix64(streams + (counters.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


# --- scores ---------------------------------------------------------------------------------------
@dataclass
class TokenScores:
    """Logprob, 1-based rank and top alternatives of N given tokens, as Python lists."""

    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]
    top: list[list[tuple[int, float]]]


def score_tokens(logprobs: Tensor, token_ids: Tensor, k: int) -> TokenScores:
    """logprobs: [N, V] log-softmax rows; token_ids: [N]; k: how many alternatives to list.
    A token's rank counts the tokens strictly more likely, so ties share the better rank."""
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))  # [N, 1]
    ranks = ((logprobs > chosen).sum(-1, dtype=torch.int32) + 1).tolist()  # int32: 2x faster than int64
    if k:
        values, ids = logprobs.topk(k, dim=-1)
        top = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    else:
        top = [[] for _ in ranks]
    return TokenScores(token_ids.tolist(), chosen.squeeze(1).tolist(), ranks, top)
