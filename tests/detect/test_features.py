"""The judge's features on hand-made per-token scores."""

import math

import numpy as np
import pytest

from app.api.score import detection
from app.detect.features import FEATURE_NAMES, features, from_result
from app.engine.protocol import PromptScores


def named(values: np.ndarray) -> dict[str, float]:
    assert values.shape == (len(FEATURE_NAMES),)
    return dict(zip(FEATURE_NAMES, values.tolist(), strict=True))


def test_features_agree_with_the_statistics_of_v1_score():
    rng = np.random.default_rng(0)
    n = 200
    scores = PromptScores(token_logprobs=(-rng.exponential(3.0, n)).tolist(),
                          ranks=rng.integers(1, 5000, n).tolist(), entropy=rng.uniform(1, 8, n).tolist(),
                          logprob_variance=rng.uniform(1, 5, n).tolist())
    d = detection(scores, judge=None)
    f = named(features(scores.token_logprobs, scores.ranks, scores.entropy, scores.logprob_variance))
    assert f["mean_logprob"] == pytest.approx(math.fsum(scores.token_logprobs) / n, rel=1e-12)
    assert f["mean_log_rank"] == pytest.approx(d["mean_log_rank"], rel=1e-12)
    assert f["mean_entropy"] == pytest.approx(d["mean_entropy"], rel=1e-12)
    assert f["fast_detect_gpt"] == d["fast_detect_gpt"]
    assert f["fast_detect_gpt_per_token"] == pytest.approx(d["fast_detect_gpt"] / math.sqrt(n))
    gltr = d["gltr"]
    assert [f["gltr_top_10"], f["gltr_top_100"], f["gltr_top_1000"], f["gltr_rest"]] == pytest.approx(
        [gltr["top_10"], gltr["top_100"], gltr["top_1000"], gltr["rest"]])
    gap = np.array(scores.token_logprobs) + np.array(scores.entropy)
    assert f["mean_gap"] == pytest.approx(gap.mean()) and f["std_gap"] == pytest.approx(gap.std())
    assert f["q10_logprob"] == pytest.approx(np.percentile(scores.token_logprobs, 10))
    assert f["share_rank_1"] == np.mean(np.array(scores.ranks) == 1)
    z = gap / np.sqrt(scores.logprob_variance)
    assert f["mean_z"] == pytest.approx(z.mean()) and f["std_z"] == pytest.approx(z.std())
    assert f["q90_z"] == pytest.approx(np.percentile(z, 90)) and f["mean_z_squared"] == pytest.approx(np.mean(z * z))
    assert f["log_num_tokens"] == pytest.approx(math.log(n))


def test_a_single_token_and_degenerate_values_give_finite_features():
    one = named(features([-2.0], [1], [3.0], [0.0]))  # a position where the model had no variance
    assert all(math.isfinite(v) for v in one.values())
    assert one["std_logprob"] == 0.0 and one["corr_logprob_entropy"] == 0.0 and one["fast_detect_gpt"] == 0.0
    assert one["share_rank_1"] == 1.0 and one["mean_z"] == 20.0  # clipped, not 1e4
    extreme = features([-math.inf, -1.0], [50000, 1], [2.0, 2.0], [1.0, 1.0])
    assert np.isfinite(extreme).all()


def test_misaligned_or_empty_scores_are_refused():
    with pytest.raises(ValueError):
        features([], [], [], [])
    with pytest.raises(ValueError):
        features([-1.0, -2.0], [1], [1.0, 1.0], [1.0, 1.0])


def test_from_result_reads_the_per_token_arrays_of_a_score_result():
    result = {"token_logprobs": [None, -1.0, -3.0], "ranks": [None, 1, 40], "entropies": [None, 2.0, 4.0],
              "logprob_variances": [None, 1.5, 3.0], "detection": {"fast_detect_gpt": 1.5}}
    assert np.array_equal(from_result(result), features([-1.0, -3.0], [1, 40], [2.0, 4.0], [1.5, 3.0]))
    with_context = {**result, "token_logprobs": [-0.5, -1.0, -3.0], "ranks": [2, 1, 40],
                    "entropies": [1.0, 2.0, 4.0], "logprob_variances": [1.0, 1.5, 3.0]}
    assert np.array_equal(from_result(with_context), features([-0.5, -1.0, -3.0], [2, 1, 40], [1.0, 2.0, 4.0],
                                                              [1.0, 1.5, 3.0]))
    assert from_result({**result, "detection": None}) is None  # detect=false
    assert from_result({**result, "token_logprobs": None}) is None  # return_tokens=false
    assert from_result({"token_logprobs": [None], "ranks": [None], "entropies": [None], "logprob_variances": [None],
                        "detection": {"fast_detect_gpt": None}}) is None  # nothing scored
