"""The judge's features: named numbers computed from one input's per-token scores.

Ghostbuster's recipe (Verma et al., 2024) takes per-token probability vectors, combines them with
vector operations and reduces each combination to a scalar; a linear classifier weighs the
scalars. We have one model, so the vectors are its views of each scored token t:

    logprob     log p_t(x_t)                          how likely the observed token was
    log_rank    ln rank_t(x_t)                         how far down the list it sat
    entropy     H(p_t)                                 how uncertain the model was there
    gap         log p_t(x_t) + H(p_t)                  observed minus expected log-likelihood
                                                       (Fast-DetectGPT's per-token term, unscaled)

reduced by mean, standard deviation and the 10th/90th percentiles (percentiles rather than
min/max: those drift with length), plus GLTR's rank buckets, the share of greedy tokens, the
correlation of logprob with entropy, Fast-DetectGPT (raw and per sqrt(token)), and the length.

Training and serving call `features()` on the same data, so a judge sees the same numbers
offline and in /v1/score: the token logprobs, ranks and entropies that /v1/score returns (the
route's merged PromptScores) and the Fast-DetectGPT criterion of its detection summary (which
carries the per-token variances the response does not return).
"""

import math

import numpy as np

MIN_LOGPROB = -1000.0
VECTORS = ("logprob", "log_rank", "entropy", "gap")
REDUCTIONS = ("mean", "std", "q10", "q90")
FEATURE_NAMES = (
    *(f"{reduction}_{vector}" for vector in VECTORS for reduction in REDUCTIONS),
    "share_rank_1", "gltr_top_10", "gltr_top_100", "gltr_top_1000", "gltr_rest",
    "corr_logprob_entropy", "fast_detect_gpt", "fast_detect_gpt_per_token", "log_num_tokens",
)


def reduce(vectors: np.ndarray) -> np.ndarray:
    """Rows of (vectors, tokens) -> (vectors, REDUCTIONS): mean, std, 10th and 90th percentile (one
    numpy call each: this runs for every input /v1/score judges)."""
    q10, q90 = np.percentile(vectors, (10, 90), axis=1)
    return np.stack([vectors.mean(axis=1), vectors.std(axis=1), q10, q90], axis=1)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r, 0 where either side is constant (a one-token text, a flat model)."""
    sa, sb = a.std(), b.std()
    if not (sa > 0 and sb > 0):
        return 0.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))


def features(logprobs: list[float], ranks: list[int], entropies: list[float],
             fast_detect_gpt: float | None) -> np.ndarray:
    """The FEATURE_NAMES vector of one input from its scored tokens (at least one); every entry is
    finite. `fast_detect_gpt` None (the model's variance was 0 everywhere) counts as 0."""
    if not logprobs or not len(logprobs) == len(ranks) == len(entropies):
        raise ValueError("features need aligned, non-empty logprobs, ranks and entropies")
    # a token the model gave zero probability (-inf) counts as very unlikely, not as a poison
    lp = np.maximum(np.asarray(logprobs, dtype=np.float64), MIN_LOGPROB)
    rank = np.asarray(ranks, dtype=np.float64)
    entropy = np.asarray(entropies, dtype=np.float64)
    vectors = np.stack([lp, np.log(rank), entropy, lp + entropy])  # in VECTORS' order
    n = len(lp)
    fdg = fast_detect_gpt if fast_detect_gpt is not None and math.isfinite(fast_detect_gpt) else 0.0
    values = reduce(vectors).ravel().tolist()
    values += [float(np.mean(rank == 1)), float(np.mean(rank <= 10)), float(np.mean((rank > 10) & (rank <= 100))),
               float(np.mean((rank > 100) & (rank <= 1000))), float(np.mean(rank > 1000)),
               correlation(lp, entropy), fdg, fdg / math.sqrt(n), math.log(n)]
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=1e6, neginf=-1e6)


def from_result(result: dict) -> np.ndarray | None:
    """Features of one /v1/score result (JSON, requested with return_tokens and detect), or None
    when it scored nothing. A leading null (the first token of a text without context) is dropped."""
    detection = result.get("detection")
    logprobs, ranks, entropies = result.get("token_logprobs"), result.get("ranks"), result.get("entropies")
    if detection is None or not logprobs or ranks is None or entropies is None:
        return None
    if logprobs[0] is None:
        logprobs, ranks, entropies = logprobs[1:], ranks[1:], entropies[1:]
    if not logprobs:
        return None
    return features(logprobs, ranks, entropies, detection.get("fast_detect_gpt"))
