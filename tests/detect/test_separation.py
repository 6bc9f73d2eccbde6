"""How well a score separates machine from human text, without a model: AUROC, the one threshold
rule (`score >= t`), each statistic's direction, and reading text files."""

import json
import math

import numpy as np
import pytest

from app.detect.data import read_texts
from app.detect.separation import auroc, average_ranks, evaluate, flagged, roc_curve, threshold_at_fpr


def brute_auroc(pos, neg) -> float:
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_auroc_equals_the_pairwise_definition():
    rng = np.random.default_rng(1)
    for _ in range(50):
        pos = rng.integers(0, 8, rng.integers(1, 30)).astype(float)  # many ties
        neg = rng.integers(0, 8, rng.integers(1, 30)).astype(float)
        assert auroc(pos, neg) == pytest.approx(brute_auroc(pos, neg))
        fpr, tpr = roc_curve(pos, neg)  # the area under the curve, ties drawn as diagonals
        assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(auroc(pos, neg))
    assert auroc([3, 4], [1, 2]) == 1.0 and auroc([1, 2], [3, 4]) == 0.0 and auroc([1], [1]) == 0.5


def test_average_ranks_share_ties():
    assert average_ranks(np.array([10.0, 20.0, 10.0, 5.0])).tolist() == [2.5, 4.0, 2.5, 1.0]


def test_threshold_is_the_lowest_that_flags_at_most_the_chosen_share_of_human_scores():
    human = np.arange(100, dtype=float)  # 0..99
    machine = np.arange(50, 150, dtype=float)
    t = threshold_at_fpr(human, 0.05)
    assert t == np.nextafter(94.0, np.inf) and flagged(human, t) == 0.05  # 95..99
    assert flagged(machine, t) == pytest.approx(55 / 100)
    assert threshold_at_fpr(human, 0.0) > human.max() and flagged(human, threshold_at_fpr(human, 0.0)) == 0.0
    # ties are never split: 3 equal top scores where 2 may be flagged -> none is
    assert flagged([5, 5, 5, 1, 1, 1, 1, 1, 1, 1], threshold_at_fpr([5, 5, 5, 1, 1, 1, 1, 1, 1, 1], 0.2)) == 0.0
    rng = np.random.default_rng(2)
    for _ in range(50):
        human = rng.normal(size=rng.integers(1, 60))
        target = rng.uniform(0, 0.5)
        t = threshold_at_fpr(human, target)
        assert flagged(human, t) <= target + 1e-12
        assert flagged(human, np.nextafter(t, -np.inf)) > target  # any lower threshold flags too many
    with pytest.raises(ValueError):
        threshold_at_fpr(human, 1.0)


def test_evaluate_orients_each_statistic():
    def result(mean_logprob, fdg, log_rank):
        return {"mean_logprob": mean_logprob, "perplexity": math.exp(-mean_logprob),
                "detection": {"fast_detect_gpt": fdg, "mean_log_rank": log_rank, "mean_entropy": 3.0,
                              "gltr": {"top_10": 0.5, "top_100": 0.2, "top_1000": 0.2, "rest": 0.1}}}

    human = [result(-5.0 - i, -1.0 - i, 5.0 + i) for i in range(10)]
    machine = [result(-2.0 + i / 10, 2.0 + i, 1.0 + i / 10) for i in range(10)]
    machine.append({"mean_logprob": None, "perplexity": None, "detection": None})  # a one-token text
    rows = {r.statistic: r for r in evaluate(human, machine, fpr=0.1)}
    for name in ("fast_detect_gpt", "mean_logprob", "perplexity", "mean_log_rank"):
        assert rows[name].auroc == 1.0 and rows[name].tpr == 1.0 and rows[name].fpr <= 0.1
        assert rows[name].num_machine == 10
    assert rows["perplexity"].direction == "lower" and rows["mean_logprob"].direction == "higher"
    # machine if mean_log_rank <= threshold: just below the second-lowest human value (6), so 1 of 10 is flagged
    assert rows["mean_log_rank"].threshold == pytest.approx(6.0) and rows["mean_log_rank"].threshold < 6.0
    assert rows["gltr_top_10"].auroc == 0.5  # identical everywhere: no signal


def test_read_texts(tmp_path):
    lines = tmp_path / "h.txt"
    lines.write_text("first text\n\nsecond {\"not json\"}\n", encoding="utf-8")
    assert read_texts(lines) == ["first text", 'second {"not json"}']
    jl = tmp_path / "m.jsonl"
    jl.write_text("\n".join([json.dumps("a\nb"), json.dumps({"text": "c", "label": 1}), ""]), encoding="utf-8")
    assert read_texts(jl) == ["a\nb", "c"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_texts(bad)
