"""Scoring, without a model: from per-token scores to per-input statistics, and the plan of
which engine sequences score a text that is longer than the model's context.

Everything here is pure (lists in, dataclasses out) so that it is unit-tested on hand-made
numbers; the route (app/api/score.py) tokenizes, submits the planned sequences to the engine,
and calls these functions on what comes back. See docs/scoring.md for what each number means.

Conventions: logprobs are natural logs; ranks are 1-based, ties counted in the token's favour
(rank = 1 + the number of vocabulary tokens strictly more likely than it), so a token tied with
the most likely one has rank 1 and counts as greedy.
"""

import math
from dataclasses import dataclass

import msgspec

from app.engine.sequence import PromptScores, SamplingParams

# GLTR's colour buckets (Gehrmann et al., 2019): rank <= 10, <= 100, <= 1000, and the rest
GLTR_BOUNDS = (10, 100, 1000)
# exp() overflows a float64 beyond this: a mean logprob below -MAX_EXP has no finite perplexity
MAX_EXP = 709.0


# --- sliding windows ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """One engine sequence of a scored input: tokens [begin, end) of the input's token ids
    (context included) are the prompt; it reports the scores of tokens [score_from, end)."""

    begin: int
    end: int
    score_from: int

    @property
    def num_tokens(self) -> int:
        return self.end - self.begin

    @property
    def num_scored(self) -> int:
        return self.end - self.score_from


def plan_windows(num_tokens: int, first_scored: int, max_len: int, stride: int | None = None) -> list[Window]:
    """Which engine sequences score tokens [first_scored, num_tokens) of one input, each once.

    `first_scored` is 1 for a plain text (token 0 has nothing before it) and the number of
    context tokens for a context/continuation pair. An input that fits in `max_len` is one
    window. A longer one is scored as the standard long-document perplexity method does (the
    Hugging Face "perplexity of fixed-length models" recipe): windows of up to `max_len` tokens
    whose ends advance by `stride`; each window reports only the tokens the earlier ones did not,
    so every token is scored once, with at least max_len - stride tokens of left context once
    past the first window (the first window's tokens see everything before them).

    stride must lie in [1, max_len - 1] (a window's first token has no context, so it can never
    be the one scored); None means max_len // 2. Returns [] when there is nothing to score.
    """
    if first_scored < 1:
        raise ValueError("first_scored must be at least 1")
    if first_scored >= num_tokens:
        return []
    if num_tokens <= max_len:
        return [Window(0, num_tokens, first_scored)]
    stride = max_len // 2 if stride is None else stride
    if not 1 <= stride <= max_len - 1:
        raise ValueError(f"stride must lie in [1, {max_len - 1}], got {stride}")
    windows = []
    done = first_scored  # tokens before this one need no score, or have one already
    # the first window ends where the model's context does, or, when the context alone is
    # longer than that, a stride past the context
    end = min(num_tokens, max_len if first_scored < max_len else first_scored + stride)
    while True:
        begin = max(0, end - max_len)
        windows.append(Window(begin, end, done))
        if end == num_tokens:
            return windows
        done, end = end, min(num_tokens, end + stride)


def merge_windows(windows: list[Window], scores: list[PromptScores]) -> PromptScores:
    """The engine's scores of each window (each window asks only for its tokens [score_from, end),
    see `window_params`) -> the scores of the input's tokens [windows[0].score_from,
    windows[-1].end), in order."""
    merged = PromptScores()
    for window, s in zip(windows, scores, strict=True):
        if len(s.token_logprobs) != window.num_scored:
            raise ValueError(f"a window scoring {window.num_scored} tokens came back with "
                             f"{len(s.token_logprobs)} scores")
        merged.extend(s)
    return merged


def window_params(params: SamplingParams, window: Window) -> SamplingParams:
    """The engine parameters of one window: score only the tokens it reports, so the lm_head
    skips the context and the overlap with the previous window."""
    return msgspec.structs.replace(params, prompt_logprobs_from=window.score_from - window.begin)


# --- statistics --------------------------------------------------------------------------------
@dataclass
class GLTRBuckets:
    """Fractions of the scored tokens whose rank is <= 10, in 11-100, in 101-1000, > 1000."""

    top_10: float
    top_100: float
    top_1000: float
    rest: float


@dataclass
class Detection:
    gltr: GLTRBuckets
    mean_log_rank: float  # mean of ln(rank)
    mean_entropy: float | None  # mean entropy (nats) of the model's predictive distribution
    fast_detect_gpt: float | None  # the analytic criterion; None when the variance sums to 0


@dataclass
class Summary:
    """The per-input numbers of one scored input (over its scored tokens only)."""

    num_tokens: int
    sum_logprob: float
    mean_logprob: float | None  # None when no token was scored
    perplexity: float | None  # exp(-mean_logprob); None when nothing was scored or it overflows
    is_greedy: bool | None  # every scored token had rank 1; None when nothing was scored
    detection: Detection | None


def perplexity(mean_logprob: float | None) -> float | None:
    """exp(-mean logprob), or None where it is undefined or not a finite float."""
    if mean_logprob is None or not math.isfinite(mean_logprob) or -mean_logprob > MAX_EXP:
        return None
    return math.exp(-mean_logprob)


def gltr_buckets(ranks: list[int]) -> GLTRBuckets:
    n = len(ranks)
    if n == 0:
        return GLTRBuckets(0.0, 0.0, 0.0, 0.0)
    counts = [0, 0, 0, 0]
    for r in ranks:
        counts[sum(r > bound for bound in GLTR_BOUNDS)] += 1
    return GLTRBuckets(*(c / n for c in counts))


def fast_detect_gpt(logprobs: list[float], entropy: list[float], variance: list[float]) -> float | None:
    """Fast-DetectGPT's analytic criterion (Bao et al., 2024) with one model for sampling and
    scoring: (sum_t log p(x_t) - sum_t mu_t) / sqrt(sum_t var_t), where, under the model's
    distribution p_t at position t, mu_t = E[log p] = -H(p_t) and var_t = Var[log p].

    For text the model itself sampled at temperature 1 each term log p(x_t) - mu_t has mean 0
    and variance var_t, so the criterion is about N(0, 1); text that keeps to the model's likely
    tokens (e.g. greedy) scores high, text less likely than the model expects scores low."""
    if not logprobs or len(entropy) != len(logprobs) or len(variance) != len(logprobs):
        return None
    total_var = math.fsum(variance)
    if not total_var > 0.0 or not math.isfinite(total_var):
        return None
    value = (math.fsum(logprobs) + math.fsum(entropy)) / math.sqrt(total_var)  # mu_t = -H_t
    return value if math.isfinite(value) else None


def detection(scores: PromptScores) -> Detection | None:
    """GLTR buckets, mean log-rank, mean entropy and Fast-DetectGPT, or None if nothing was scored.
    Entropy and the criterion need the per-position statistics (SamplingParams.prompt_stats)."""
    ranks = scores.ranks
    if not ranks:
        return None
    with_stats = len(scores.entropy) == len(ranks) and len(scores.logprob_variance) == len(ranks)
    return Detection(
        gltr=gltr_buckets(ranks),
        mean_log_rank=math.fsum(math.log(r) for r in ranks) / len(ranks),
        mean_entropy=math.fsum(scores.entropy) / len(ranks) if with_stats else None,
        fast_detect_gpt=fast_detect_gpt(scores.token_logprobs, scores.entropy, scores.logprob_variance)
        if with_stats else None,
    )


def summarize(scores: PromptScores, detect: bool = True) -> Summary:
    """Sums, mean, perplexity, the greedy flag and (when `detect`) the detection statistics of
    one input's scored tokens."""
    n = len(scores.token_logprobs)
    total = math.fsum(scores.token_logprobs)
    mean = total / n if n else None
    return Summary(
        num_tokens=n,
        sum_logprob=total,
        mean_logprob=mean,
        perplexity=perplexity(mean),
        is_greedy=all(r == 1 for r in scores.ranks) if n else None,
        detection=detection(scores) if detect else None,
    )
