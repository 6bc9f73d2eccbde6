"""The judge without a model: fitting, calibration, save -> load, and refusing another model's judge."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from app.detect.features import FEATURE_NAMES
from app.detect.judge import JudgeError, ModelIdentity, load, load_judge
from app.detect.separation import auroc
from app.detect.train import fit, split

MODEL = ModelIdentity(name="tiny", source="/models/tiny", num_parameters=1000, load_format="auto")


def synthetic(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features where machine rows sit `shift` standard deviations away on two of them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * n, len(FEATURE_NAMES)))
    y = np.r_[np.zeros(n, dtype=int), np.ones(n, dtype=int)]
    x[y == 1, 0] += shift
    x[y == 1, 4] -= shift
    return x, y, np.arange(2 * n)


@pytest.fixture(scope="module")
def judge():
    x, y, groups = synthetic(150, 1.5, seed=0)
    return fit(x, y, groups, "synthetic", MODEL)


def test_fit_separates_held_out_rows_and_its_probabilities_are_calibrated(judge):
    x, y, _ = synthetic(1000, 1.5, seed=1)
    p = judge.predict_proba(x)
    assert ((p >= 0) & (p <= 1)).all()
    assert auroc(p[y == 1], p[y == 0]) > 0.9
    # calibration: in each probability bin, the share of machine rows is close to the mean probability
    for low, high in ((0.0, 0.2), (0.2, 0.5), (0.5, 0.8), (0.8, 1.0)):
        mask = (p >= low) & (p < high)
        assert mask.sum() > 50 and abs(y[mask].mean() - p[mask].mean()) < 0.1
    weights = dict(judge.weights())
    assert weights["mean_logprob"] > 0 and weights["mean_log_rank"] < 0  # the two informative features


def test_save_then_load_gives_identical_probabilities(judge, tmp_path):
    path = judge.save(tmp_path / "judge")
    again = load(tmp_path / "judge")
    x, _, _ = synthetic(50, 1.5, seed=2)
    assert np.array_equal(judge.predict_proba(x), again.predict_proba(x))
    assert again.name == "synthetic" and again.model == MODEL and path.name == "judge.json"
    assert json.loads(path.read_text())["format"] == "gpt2-serve-judge/1"


def test_a_verdict_explains_itself(judge):
    x, _, _ = synthetic(5, 1.5, seed=3)
    verdict = judge.verdict(x[-1])
    assert verdict["machine_probability"] == pytest.approx(float(judge.predict_proba(x[-1])), abs=1e-12)
    assert verdict["verdict"] == ("machine" if verdict["machine_probability"] >= judge.threshold else "human")
    contributions = [f["contribution"] for f in verdict["top_features"]]
    assert len(contributions) == 5 and contributions == sorted(contributions, key=abs, reverse=True)
    # the contributions of all features add up to the log-odds
    a, c = judge.calibration
    logit = judge.contributions(x[-1]).sum() + a * judge.intercept + c
    assert 1 / (1 + np.exp(-logit)) == pytest.approx(verdict["machine_probability"], abs=1e-12)


def test_a_judge_for_another_model_is_refused(judge, tmp_path):
    judge.save(tmp_path)
    same = SimpleNamespace(name="served-as", source="/elsewhere/tiny", num_parameters=1000, load_format="auto")
    assert load_judge(tmp_path, same).name == "synthetic"  # the same model moved to another directory
    assert load_judge(None, same) is None
    for other, what in ((dict(num_parameters=2000), "parameter count 2000"), (dict(source="gpt2"), "model 'gpt2'"),
                        (dict(load_format="dummy"), "load format 'dummy'")):
        with pytest.raises(JudgeError, match="was trained on the scores of model '/models/tiny'") as error:
            load_judge(tmp_path, SimpleNamespace(**{**vars(same), **other}))
        assert what in str(error.value) and "train-detector" in str(error.value)


def test_unreadable_judges_are_refused_with_the_reason(tmp_path, judge):
    with pytest.raises(JudgeError, match="cannot read the judge"):
        load(tmp_path / "missing")
    (tmp_path / "judge.json").write_text('{"format": "something else"}')
    with pytest.raises(JudgeError, match="not a judge written by"):
        load(tmp_path)
    body = json.loads(judge.save(tmp_path / "ok").read_text())
    (tmp_path / "judge.json").write_text(json.dumps({**body, "feature_names": body["feature_names"][:-1]}))
    with pytest.raises(JudgeError, match="other features"):
        load(tmp_path)
    (tmp_path / "judge.json").write_text(json.dumps({**body, "coef": body["coef"][:3]}))
    with pytest.raises(JudgeError, match="damaged"):
        load(tmp_path)


def test_split_keeps_groups_together_and_both_classes_on_each_side():
    y = np.array([0, 1] * 50)
    groups = np.repeat(np.arange(50), 2)  # a human text and the machine text it prompted
    test = split(y, groups, 0.25, seed=0)
    assert 0.15 < test.mean() < 0.35 and set(y[test]) == {0, 1} and set(y[~test]) == {0, 1}
    assert not set(groups[test]) & set(groups[~test])


def test_fit_refuses_one_class():
    x, y, groups = synthetic(20, 1.0, seed=0)
    with pytest.raises(ValueError, match="both human and machine"):
        fit(x[y == 0], y[y == 0], groups[y == 0], "x", MODEL)


def test_serving_and_calibrate_do_not_import_scikit_learn():
    code = ("import sys, app.main, app.api.score, app.detect.judge, app.detect.features, app.detect.calibrate; "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_a_threshold_the_verdict_flags_about_fpr_of_human_texts():
    x, y, groups = synthetic(300, 1.5, seed=4)
    judge = fit(x, y, groups, "low fpr", MODEL, threshold=None, fpr=0.02)
    fresh, labels, _ = synthetic(2000, 1.5, seed=5)
    flagged = judge.predict_proba(fresh) >= judge.threshold
    assert judge.threshold > 0.5 and flagged[labels == 0].mean() < 0.05  # 2% out of fold, a little more on new data
    assert flagged[labels == 1].mean() > 0.2
