"""The judge's features: named numbers computed from one input's per-token scores.

Ghostbuster's recipe (Verma et al., 2024) takes per-token probability vectors, combines them with
vector operations and reduces each combination to a scalar; a linear classifier weighs the
scalars. We have one model, so the vectors are its views of each scored token t:

    logprob     log p_t(x_t)                       how likely the observed token was
    log_rank    ln rank_t(x_t)                      how far down the list it sat
    entropy     H(p_t)                              how uncertain the model was there
    gap         log p_t(x_t) + H(p_t)               observed minus expected log-likelihood
    z           gap / sqrt(Var_{x~p_t}[log p_t(x)])  the gap in the model's own standard deviations
                                                    (Fast-DetectGPT's per-token term, standardised)

reduced by mean, standard deviation and the 10th/90th percentiles (percentiles rather than
min/max: those drift with length), plus the mean of z^2, GLTR's rank buckets, the share of
greedy tokens, the correlation of logprob with entropy, Fast-DetectGPT (raw and per sqrt(token))
and the length.

On the model's own temperature-1 samples every z_t has mean 0 and variance 1 by construction;
greedy and low-temperature text has z well above 0 with a small spread; human text deviates in
its own ways (a small model is typically under-confident on it: z a little above 0, spread below
1). The z features measured +0.05 AUROC over the same judge without them (docs/scoring.md).

Training and serving call `features()` on the same numbers: the per-token arrays /v1/score
returns (token_logprobs, ranks, entropies, logprob_variances), which the route builds from the
same merged scores it passes to the judge.
"""

import math

import numpy as np

from app.scoring import fast_detect_gpt

MIN_LOGPROB = -1000.0  # a token given zero probability (-inf) counts as very unlikely, not as a poison
MIN_VARIANCE = 1e-4  # positions where the model is all but certain: no z of thousands
MAX_Z = 20.0
VECTORS = ("logprob", "log_rank", "entropy", "gap", "z")
REDUCTIONS = ("mean", "std", "q10", "q90")
FEATURE_NAMES = (
    *(f"{reduction}_{vector}" for vector in VECTORS for reduction in REDUCTIONS),
    "mean_z_squared", "share_rank_1", "gltr_top_10", "gltr_top_100", "gltr_top_1000", "gltr_rest",
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


def features(logprobs: list[float], ranks: list[int], entropies: list[float], variances: list[float]) -> np.ndarray:
    """The FEATURE_NAMES vector of one input from its scored tokens (at least one); every entry is finite."""
    if not logprobs or not len(logprobs) == len(ranks) == len(entropies) == len(variances):
        raise ValueError("features need aligned, non-empty logprobs, ranks, entropies and variances")
    lp = np.maximum(np.asarray(logprobs, dtype=np.float64), MIN_LOGPROB)
    rank = np.asarray(ranks, dtype=np.float64)
    entropy = np.asarray(entropies, dtype=np.float64)
    gap = lp + entropy
    z = np.clip(gap / np.sqrt(np.maximum(np.asarray(variances, dtype=np.float64), MIN_VARIANCE)), -MAX_Z, MAX_Z)
    n = len(lp)
    fdg = fast_detect_gpt(logprobs, entropies, variances)  # as /v1/score's detection.fast_detect_gpt
    fdg = fdg if fdg is not None else 0.0  # None: the model's variance was 0 everywhere
    values = reduce(np.stack([lp, np.log(rank), entropy, gap, z])).ravel().tolist()
    values += [float(np.mean(z * z)), float(np.mean(rank == 1)), float(np.mean(rank <= 10)),
               float(np.mean((rank > 10) & (rank <= 100))), float(np.mean((rank > 100) & (rank <= 1000))),
               float(np.mean(rank > 1000)), correlation(lp, entropy), fdg, fdg / math.sqrt(n), math.log(n)]
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=1e6, neginf=-1e6)


def from_result(result: dict) -> np.ndarray | None:
    """Features of one /v1/score result (JSON, requested with return_tokens and detect), or None
    when it scored nothing. A leading null (the first token of a text without context) is dropped."""
    arrays = [result.get(key) for key in ("token_logprobs", "ranks", "entropies", "logprob_variances")]
    if result.get("detection") is None or any(a is None for a in arrays) or not arrays[0]:
        return None
    if arrays[0][0] is None:
        arrays = [a[1:] for a in arrays]
    return features(*arrays) if arrays[0] else None
