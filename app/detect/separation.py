"""How well a score tells machine-written from human text: AUROC, ROC curves and the threshold at a
chosen false-positive rate, for /v1/score's zero-shot statistics (`gpt2-serve calibrate`, the
judge's report) and for the judge's own probabilities (its verdict threshold) alike.

Machine texts are the positives, and a score flags a text as machine-written when
`score >= threshold`: the judge's rule (judge.py), the one rule everywhere. A statistic where
lower means machine is negated first. Plain numpy: `gpt2-serve calibrate` needs no scikit-learn.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties sharing the average of their ranks (as scipy's rankdata)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # average of ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(machine: list[float] | np.ndarray, human: list[float] | np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random machine score is above a random
    human one, ties counting one half (Mann-Whitney U)."""
    pos, neg = np.asarray(machine, dtype=float), np.asarray(human, dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("both sets need at least one value")
    ranks = average_ranks(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def roc_curve(machine: np.ndarray, human: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of `score >= t` over every observed t, from (0, 0)."""
    thresholds = np.unique(np.concatenate([machine, human]))[::-1]
    fpr = np.array([0.0, *((human >= t).mean() for t in thresholds)])
    tpr = np.array([0.0, *((machine >= t).mean() for t in thresholds)])
    return fpr, tpr


def threshold_at_fpr(human: list[float] | np.ndarray, fpr: float) -> float:
    """The lowest threshold t for `score >= t` that flags at most `fpr` of these human scores: just
    above the (k+1)-th highest of the n scores, k = floor(fpr * n). Ties are never split: a value is
    flagged with all its equals or not at all, so where the (k+1)-th highest value is shared with
    higher-ranked scores, fewer than k are flagged."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError("fpr must lie in [0, 1)")
    ordered = np.sort(np.asarray(human, dtype=float))[::-1]  # descending
    allowed = min(math.floor(fpr * len(ordered) + 1e-9), len(ordered) - 1)
    return float(np.nextafter(ordered[allowed], np.inf))


def flagged(scores: np.ndarray, threshold: float) -> float:
    """The share of `scores` that `score >= threshold` flags."""
    return float(np.mean(np.asarray(scores) >= threshold))


# --- the zero-shot statistics of /v1/score ------------------------------------------------------
@dataclass(frozen=True)
class Statistic:
    name: str
    get: Callable[[dict], float | None]  # from one /v1/score result
    higher_is_machine: bool

    def scores(self, results: list[dict]) -> np.ndarray:
        """The statistic of each result, negated where lower means machine; nulls (a one-token text)
        and non-finite values left out."""
        sign = 1.0 if self.higher_is_machine else -1.0
        return np.array([sign * v for v in map(self.get, results) if v is not None and math.isfinite(v)])


def _detection(key: str) -> Callable[[dict], float | None]:
    return lambda r: (r.get("detection") or {}).get(key)


def _gltr(key: str) -> Callable[[dict], float | None]:
    return lambda r: ((r.get("detection") or {}).get("gltr") or {}).get(key)


# which way each statistic points for machine-written text (the usual finding; a statistic whose
# AUROC comes out below 0.5 on your data points the other way there)
STATISTICS = (
    Statistic("fast_detect_gpt", _detection("fast_detect_gpt"), True),
    Statistic("mean_logprob", lambda r: r.get("mean_logprob"), True),
    Statistic("perplexity", lambda r: r.get("perplexity"), False),
    Statistic("mean_log_rank", _detection("mean_log_rank"), False),
    Statistic("gltr_top_10", _gltr("top_10"), True),
    Statistic("gltr_rest", _gltr("rest"), False),
    Statistic("mean_entropy", _detection("mean_entropy"), False),
)


@dataclass
class Row:
    statistic: str
    direction: str  # "higher" or "lower": which way flags machine text
    auroc: float
    threshold: float  # in the statistic's own units
    fpr: float  # the human texts' share flagged at that threshold
    tpr: float  # the machine texts' share flagged
    num_human: int
    num_machine: int


def evaluate(human: list[dict], machine: list[dict], fpr: float = 0.05) -> list[Row]:
    """One row per statistic from the /v1/score results of the two sets. Inputs for which a
    statistic is null are left out of its row; a statistic null on a whole set has no row."""
    rows = []
    for stat in STATISTICS:
        h, m = stat.scores(human), stat.scores(machine)
        if len(h) == 0 or len(m) == 0:
            continue
        t = threshold_at_fpr(h, fpr)
        rows.append(Row(stat.name, "higher" if stat.higher_is_machine else "lower", auroc(m, h),
                        t if stat.higher_is_machine else -t, flagged(h, t), flagged(m, t), len(h), len(m)))
    return rows


def plot_roc(path: Path, title: str, human: list[dict], machine: list[dict],
             judge: tuple[np.ndarray, np.ndarray] | None = None, mark_fpr: float | None = None) -> None:
    """Draw to a PNG the ROC curve of each statistic of these /v1/score results, and of the judge's
    (machine, human) probabilities when given, each labelled with its AUROC."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("drawing the ROC needs matplotlib: pip install 'gpt2-serve[plot]'") from exc
    fig, ax = plt.subplots(figsize=(6.5, 6))
    if judge is not None:
        ax.plot(*roc_curve(*judge), color="black", linewidth=2.2, label=f"judge (AUROC {auroc(*judge):.3f})")
    for stat in STATISTICS:
        h, m = stat.scores(human), stat.scores(machine)
        if len(h) and len(m):
            ax.plot(*roc_curve(m, h), linewidth=1, label=f"{stat.name} (AUROC {auroc(m, h):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    if mark_fpr is not None:
        ax.axvline(mark_fpr, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="false-positive rate (human texts flagged)", ylabel="true-positive rate (machine texts flagged)",
           title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
