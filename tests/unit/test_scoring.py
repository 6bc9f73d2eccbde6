"""The scoring maths without a model: window plans, merging, statistics and an input's result, and
the request schema."""

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from app.api.score import detection, result
from app.api.score_plan import ScoredInput
from app.api.score_schemas import ScoreRequest
from app.engine.protocol import PromptScores, RequestOutput, SamplingParams
from app.scoring import (
    Window,
    fast_detect_gpt,
    gltr_buckets,
    merge_windows,
    perplexity,
    plan_windows,
    window_ends,
    window_params,
)


# --- windows -------------------------------------------------------------------------------------
def check_plan(n: int, first: int, max_len: int, stride: int | None) -> list[Window]:
    windows = plan_windows(n, first, max_len, stride)
    assert len(window_ends(n, first, max_len, stride)) == len(windows), "counted without making them"
    s = max_len // 2 if stride is None else stride
    scored = [t for w in windows for t in range(w.score_from, w.end)]
    assert scored == list(range(first, n)), "every token from `first` on is scored once, in order"
    for k, w in enumerate(windows):
        assert 0 <= w.begin < w.score_from < w.end <= n
        assert w.num_tokens <= max_len
        if n <= max_len:
            assert (w.begin, w.end) == (0, n)
        elif k > 0:
            assert w.score_from - w.begin >= max_len - s, "at least max_len - stride tokens of left context"
            assert w.num_tokens == max_len or w.end == n
    return windows


def test_an_input_that_fits_is_one_window():
    assert plan_windows(10, 1, 16) == [Window(0, 10, 1)]
    assert plan_windows(16, 5, 16, stride=3) == [Window(0, 16, 5)]


def test_nothing_to_score_plans_nothing():
    assert plan_windows(1, 1, 16) == []
    assert plan_windows(4, 4, 16) == []


def test_three_times_the_context_scores_every_token_once():
    windows = check_plan(48, 1, 16, None)
    assert windows == [Window(0, 16, 1), Window(8, 24, 16), Window(16, 32, 24), Window(24, 40, 32),
                       Window(32, 48, 40)]


def test_sliding_window_matches_the_standard_recipe():
    # Hugging Face's "perplexity of fixed-length models": begin in range(0, n, stride), end = begin + max_len,
    # score the tokens after the previous end. Ours differs in the last window only: it is a full max_len
    # long (more context for its tokens) where the recipe's is cut short at a multiple of the stride
    n, max_len, stride = 100, 16, 5
    expected, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + max_len, n)
        expected.append(Window(begin, end, max(prev_end, 1)))
        prev_end = end
        if end == n:
            break
    windows = plan_windows(n, 1, max_len, stride)
    assert windows[:-1] == expected[:-1]
    assert windows[-1] == Window(n - max_len, n, expected[-1].score_from) and n - max_len < expected[-1].begin


def test_a_context_longer_than_the_window_is_skipped_not_scored():
    windows = check_plan(40, 30, 16, 4)
    assert windows[0] == Window(18, 34, 30)  # first window: the stride after the context, max_len tokens long
    windows = check_plan(40, 10, 16, 4)
    assert windows[0] == Window(0, 16, 10)


@pytest.mark.parametrize("stride", [0, 16, 17])
def test_stride_must_leave_context(stride):
    with pytest.raises(ValueError, match="stride"):
        plan_windows(40, 1, 16, stride)


def test_random_plans():
    rng = random.Random(0)
    for _ in range(500):
        max_len = rng.randint(2, 40)
        n = rng.randint(2, 200)
        first = rng.randint(1, n - 1)
        stride = rng.choice([None, rng.randint(1, max_len - 1)])
        check_plan(n, first, max_len, stride)


def window_scores(window: Window) -> PromptScores:
    """What the engine returns for a window run with window_params (its tokens [score_from, end)),
    each entry tagged with the global token it scores."""
    tokens = range(window.score_from, window.end)
    return PromptScores(token_logprobs=[-float(t) for t in tokens], ranks=list(tokens),
                        top=[[(t, 0.0)] for t in tokens], entropy=[t / 2 for t in tokens],
                        logprob_variance=[t / 4 for t in tokens])


def test_merging_windows_keeps_each_token_once_in_order():
    windows = plan_windows(50, 3, 16, 6)
    merged = merge_windows(windows, [window_scores(w) for w in windows])
    tokens = list(range(3, 50))
    assert merged.ranks == tokens
    assert merged.token_logprobs == [-float(t) for t in tokens]
    assert merged.top == [[(t, 0.0)] for t in tokens]
    assert merged.entropy == [t / 2 for t in tokens] and merged.logprob_variance == [t / 4 for t in tokens]


def test_window_params_ask_the_engine_only_for_the_reported_tokens():
    params = SamplingParams(max_tokens=0, prompt_logprobs=0)
    assert window_params(params, Window(0, 10, 1)).prompt_logprobs_from == 1
    assert window_params(params, Window(40, 56, 50)).prompt_logprobs_from == 10
    assert params.prompt_logprobs_from == 1  # a copy, not a change


def test_merging_refuses_scores_of_the_wrong_length():
    windows = [Window(0, 10, 1)]
    with pytest.raises(ValueError, match="scores"):
        merge_windows(windows, [PromptScores(token_logprobs=[0.0] * 8, ranks=[1] * 8)])


# --- statistics ----------------------------------------------------------------------------------
def scores(logprobs, ranks, entropy=None, variance=None) -> PromptScores:
    return PromptScores(token_logprobs=list(logprobs), ranks=list(ranks), top=[[] for _ in ranks],
                        entropy=list(entropy or []), logprob_variance=list(variance or []))


def score_result(s: PromptScores, detect: bool = True, token_ids: list[int] | None = None) -> dict:
    """app/api/score.py's result for one input without a context, scored in one window."""
    ids = token_ids or list(range(len(s.token_logprobs) + 1))
    windows = plan_windows(len(ids), 1, 1024)
    item = ScoredInput(0, [], ids, windows, SamplingParams())
    service = SimpleNamespace(tokenizer=SimpleNamespace(token_str=str), judge=None)
    return result(item, [RequestOutput("s", prompt_scores=s)] * len(windows), ScoreRequest(input=ids, detect=detect),
                  service)


def numbers(r: dict) -> tuple:
    return tuple(r[k] for k in ("num_tokens", "sum_logprob", "mean_logprob", "perplexity", "is_greedy"))


def test_result_numbers_and_detection():
    r = score_result(scores([-1.0, -2.0, -3.0], [1, 4, 2000], [2.0, 3.0, 4.0], [1.0, 2.0, 1.0]))
    assert numbers(r)[:3] == (3, -6.0, -2.0) and r["perplexity"] == pytest.approx(math.exp(2.0))
    assert r["is_greedy"] is False and r["token_logprobs"] == [None, -1.0, -2.0, -3.0]
    d = r["detection"]
    assert tuple(d["gltr"].values()) == pytest.approx((2 / 3, 0, 0, 1 / 3))
    assert d["mean_log_rank"] == pytest.approx((math.log(1) + math.log(4) + math.log(2000)) / 3)
    assert d["mean_entropy"] == pytest.approx(3.0)
    # (sum log p - sum(-H)) / sqrt(sum var) = (-6 + 9) / 2
    assert d["fast_detect_gpt"] == pytest.approx(1.5) and d["judge"] is None


def test_greedy_and_detect_off():
    r = score_result(scores([-0.5, -0.1], [1, 1]), detect=False)
    assert r["is_greedy"] is True and r["detection"] is None and r["entropies"] is None


def test_without_stats_detection_has_no_entropy_or_criterion():
    d = detection(scores([-0.5, -0.1], [1, 3]), judge=None)
    assert d["mean_entropy"] is None and d["fast_detect_gpt"] is None and d["gltr"]["top_10"] == 1.0


def test_nothing_scored():
    r = score_result(PromptScores(), token_ids=[464])
    assert numbers(r) == (0, 0.0, None, None, None) and r["detection"] is None and r["token_logprobs"] == [None]


def test_perplexity_overflow_is_null_not_inf():
    assert perplexity(-700.0) == pytest.approx(math.exp(700.0))
    assert perplexity(-710.0) is None
    assert perplexity(None) is None
    assert score_result(scores([-800.0], [50000]))["perplexity"] is None


def test_gltr_bucket_edges():
    assert gltr_buckets([1, 10, 11, 100, 101, 1000, 1001, 50000]) == (0.25, 0.25, 0.25, 0.25)
    assert gltr_buckets([]) == (0.0, 0.0, 0.0, 0.0)


def test_fast_detect_gpt_without_variance_is_null():
    assert fast_detect_gpt([0.0, 0.0], [0.0, 0.0], [0.0, 0.0]) is None
    assert fast_detect_gpt([], [], []) is None


def test_fast_detect_gpt_is_standard_normal_on_samples_of_the_model():
    """The criterion's defining property, on synthetic next-token distributions: for tokens drawn
    from p_t itself it is about N(0, 1); the argmax scores high, uniform draws low."""
    rng = np.random.default_rng(0)
    V, T = 200, 40
    values, greedy, uniform = [], [], []
    for _ in range(400):
        logits = rng.normal(0, 2.5, size=(T, V))
        logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        p = np.exp(logp)
        entropy = -(p * logp).sum(1)
        var = (p * logp**2).sum(1) - entropy**2
        drawn = np.array([rng.choice(V, p=row) for row in p])
        rows = np.arange(T)
        values.append(fast_detect_gpt(logp[rows, drawn].tolist(), entropy.tolist(), var.tolist()))
        greedy.append(fast_detect_gpt(logp.max(1).tolist(), entropy.tolist(), var.tolist()))
        uniform.append(fast_detect_gpt(logp[rows, rng.integers(0, V, T)].tolist(), entropy.tolist(), var.tolist()))
    assert abs(np.mean(values)) < 0.15 and abs(np.std(values) - 1) < 0.15
    assert min(greedy) > 3 and max(uniform) < -3


# --- the request schema --------------------------------------------------------------------------
def test_request_forms_and_pairs():
    r = ScoreRequest(input="a b")
    assert r.inputs() == ["a b"] and r.contexts() is None
    r = ScoreRequest(input=["x", "y"], context=["c", ""])
    assert r.inputs() == ["x", "y"] and r.contexts() == ["c", ""]
    r = ScoreRequest(input=[1, 2], context=[])
    assert r.inputs() == [[1, 2]] and r.contexts() == [[]]
    r = ScoreRequest(input=[[1, 2], [3]], context=[[4], []])
    assert r.inputs() == [[1, 2], [3]] and r.contexts() == [[4], []]
    p = ScoreRequest(input="a", top_logprobs=3, detect=False).to_sampling_params()
    assert (p.max_tokens, p.temperature, p.prompt_logprobs, p.prompt_stats) == (0, 0.0, 3, False)
    assert ScoreRequest(input="a").to_sampling_params().prompt_stats is True


@pytest.mark.parametrize("body,field", [
    ({"input": ["a", "b"], "context": ["c"]}, "context"),
    ({"input": [[1], [2]], "context": []}, "context"),
    ({"input": "a", "context": ["c"]}, "context"),
    ({"input": [1, 2], "context": "c"}, "context"),
    ({"input": "a", "top_logprobs": 21}, "top_logprobs"),
    ({"input": "a", "top_logprobs": -1}, "top_logprobs"),
    ({"input": []}, "input"),
    ({"input": [[]]}, "input"),
    ({"input": "a", "window": "tumbling"}, "window"),
    ({"input": "a", "stride": 0}, "stride"),
])
def test_bad_requests_name_the_field(body, field):
    with pytest.raises(ValidationError) as info:
        ScoreRequest(**body)
    assert info.value.errors()[0]["loc"][0] == field



def test_texts_and_stride_are_checked_before_a_token_is_made():
    """Inputs and contexts count together against GPT2_MAX_INPUTS; a bad stride is refused as a stride."""
    from app.api.errors import APIError
    from app.api.limits import Limits
    from app.api.score_plan import check_before_tokenizing
    from app.engine.protocol import EngineInfo

    info = EngineInfo(name="m", source="m", device="cpu", dtype="float32", load_format="dummy", max_model_len=64,
                      num_parameters=1, vocab_size=50257, eos_token_id=None, max_batch_size=4, tokenizer_dir="",
                      memory_total=0.0, memory_used=0.0)
    limits = Limits(max_inputs=3, max_input_chars=10**6, max_sequences=64, max_request_tokens=10**6,
                    max_response_entries=10**6, max_logit_bias=300, max_stop_chars=100, min_stride=8)
    check_before_tokenizing(ScoreRequest(input=["a", "b", "c"]), info, limits)
    for body, param, code in [(ScoreRequest(input=["a", "b"], context=["x", "y"]), "input", "request_too_large"),
                              (ScoreRequest(input="a", stride=64), "stride", "invalid_value"),
                              (ScoreRequest(input="a", stride=4), "stride", "request_too_large")]:
        with pytest.raises(APIError) as refused:
            check_before_tokenizing(body, info, limits)
        assert (refused.value.param, refused.value.code) == (param, code)
