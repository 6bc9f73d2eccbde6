"""Scoring, without a model: from per-token scores to per-input statistics, and the plan of
which engine sequences score a text that is longer than the model's context.

Everything here is pure (lists in, numbers out) so that it is unit-tested on hand-made numbers;
app/api/score_plan.py plans a request's windows with it, and app/api/score.py merges what the
engine returns and builds the response's numbers with it. See docs/scoring.md for what each
number means.

Conventions: logprobs are natural logs; ranks are 1-based, ties counted in the token's favour
(rank = 1 + the number of vocabulary tokens strictly more likely than it), so a token tied with
the most likely one has rank 1 and counts as greedy.
"""

import math
from dataclasses import dataclass

import msgspec

from app.engine.protocol import PromptScores, SamplingParams

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


def window_ends(num_tokens: int, first_scored: int, max_len: int, stride: int | None = None) -> range:
    """Where the windows that score tokens [first_scored, num_tokens) of one input end, the last
    one cut at num_tokens: a range, so that len() counts the windows without making them.

    `first_scored` is 1 for a plain text (token 0 has nothing before it) and the number of
    context tokens for a context/continuation pair. An input that fits in `max_len` is one
    window. A longer one is scored as the standard long-document perplexity method does (the
    Hugging Face "perplexity of fixed-length models" recipe): windows of up to `max_len` tokens
    whose ends advance by `stride`; each window reports only the tokens the earlier ones did not,
    so every token is scored once, with at least max_len - stride tokens of left context once
    past the first window (the first window's tokens see everything before them).

    stride must lie in [1, max_len - 1] (a window's first token has no context, so it can never
    be the one scored); None means max_len // 2. Empty when there is nothing to score.
    """
    if first_scored < 1:
        raise ValueError("first_scored must be at least 1")
    if first_scored >= num_tokens:
        return range(0)
    if num_tokens <= max_len:
        return range(num_tokens, num_tokens + 1)
    stride = max_len // 2 if stride is None else stride
    if not 1 <= stride <= max_len - 1:
        raise ValueError(f"stride must lie in [1, {max_len - 1}], got {stride}")
    # the first window ends where the model's context does, or, when the context alone is
    # longer than that, a stride past the context; the last end past num_tokens is cut there
    first_end = max_len if first_scored < max_len else first_scored + stride
    return range(first_end, num_tokens + stride, stride)


def plan_windows(num_tokens: int, first_scored: int, max_len: int, stride: int | None = None) -> list[Window]:
    """The engine sequences that score tokens [first_scored, num_tokens) of one input, each once
    (see window_ends)."""
    windows, done = [], first_scored  # tokens before `done` need no score, or have one already
    for end in window_ends(num_tokens, first_scored, max_len, stride):
        end = min(end, num_tokens)
        windows.append(Window(max(0, end - max_len), end, done))
        done = end
    return windows


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
def perplexity(mean_logprob: float | None) -> float | None:
    """exp(-mean logprob), or None where it is undefined or not a finite float."""
    if mean_logprob is None or not math.isfinite(mean_logprob) or -mean_logprob > MAX_EXP:
        return None
    return math.exp(-mean_logprob)


def gltr_buckets(ranks: list[int]) -> tuple[float, ...]:
    """Fractions of the ranks that are <= 10, in 11-100, in 101-1000, and > 1000 (all 0 without ranks)."""
    counts = [0, 0, 0, 0]
    for r in ranks:
        counts[sum(r > bound for bound in GLTR_BOUNDS)] += 1
    return tuple(c / len(ranks) if ranks else 0.0 for c in counts)


def mean_log_rank(ranks: list[int]) -> float:
    """The mean of ln(rank): lower looks more machine-like."""
    return math.fsum(map(math.log, ranks)) / len(ranks)


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
