"""Fitting a judge with scikit-learn (used by `gpt2-serve train-detector` only; serving needs numpy).

A logistic regression on standardised features, its regularisation chosen by cross-validated
AUROC; then Platt scaling fitted on out-of-fold decision values, so the probabilities are
calibrated on texts the regression did not see. Classes are weighted to balance, so a
machine_probability of 0.5 means even odds whatever the mix of the training set.
"""

import numpy as np

from app.detect.features import FEATURE_NAMES
from app.detect.judge import Judge, ModelIdentity
from app.detect.separation import threshold_at_fpr

FOLDS = 5
CS = np.logspace(-3, 2, 11)


def _folds(y: np.ndarray, groups: np.ndarray, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold

    folds = min(FOLDS, int(np.bincount(y).min()), len(np.unique(groups)))
    return list(StratifiedGroupKFold(n_splits=max(folds, 2), shuffle=True, random_state=seed).split(y, y, groups))


def fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray, name: str, model: ModelIdentity, *,
        threshold: float | None = 0.5, fpr: float = 0.01, seed: int = 0, training: dict | None = None) -> Judge:
    """A calibrated judge of feature rows x (n, features) with labels y (1 = machine). Rows sharing
    a group stay in one cross-validation fold. The verdict threshold is `threshold` or, when that
    is None, the lowest probability that flags at most `fpr` of the human rows, out of fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_predict
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y)) != 2:
        raise ValueError("training needs both human and machine texts")
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    folds = _folds(y, groups, seed)
    search = GridSearchCV(LogisticRegression(class_weight="balanced", max_iter=5000), {"C": CS}, cv=folds,
                          scoring="roc_auc")
    c = float(search.fit(z, y).best_params_["C"])
    regression = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    out_of_fold = cross_val_predict(regression, z, y, cv=folds, method="decision_function")
    platt = LogisticRegression(C=1e6, class_weight="balanced", max_iter=5000).fit(out_of_fold[:, None], y)
    regression.fit(z, y)
    judge = Judge(name=name, model=model, feature_names=list(FEATURE_NAMES), mean=scaler.mean_.tolist(),
                  scale=scaler.scale_.tolist(), coef=regression.coef_[0].tolist(),
                  intercept=float(regression.intercept_[0]),
                  calibration=(float(platt.coef_[0, 0]), float(platt.intercept_[0])),
                  threshold=0.5 if threshold is None else threshold,
                  training={**(training or {}), "C": c})
    if threshold is None:
        a, b = judge.calibration
        human = 0.5 * (1.0 + np.tanh(0.5 * (a * out_of_fold[y == 0] + b)))
        judge.threshold = threshold_at_fpr(human, fpr)
    return judge


def split(y: np.ndarray, groups: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """A held-out mask: about `test_fraction` of the groups (both classes represented on each side),
    a group never on both sides."""
    from sklearn.model_selection import GroupShuffleSplit

    for attempt in range(100):
        splitter = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed + attempt)
        _, test = next(splitter.split(y, y, groups))
        mask = np.zeros(len(y), dtype=bool)
        mask[test] = True
        if len(np.unique(y[mask])) == 2 and len(np.unique(y[~mask])) == 2:
            return mask
    raise ValueError("cannot split the texts so that both classes appear in training and held-out data")
