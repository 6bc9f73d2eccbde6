"""The judge: a calibrated linear model over the features, saved as JSON, run with numpy.

    machine_probability = sigmoid(a * (w . (x - mean) / scale + b) + c)

w, b: a logistic regression on standardised features; a, c: Platt scaling fitted on held-out
decision values (train.py). Serving needs numpy only, no scikit-learn. A judge belongs to the
model whose scores it was trained on: load_judge() refuses it on another model.
"""

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from app.detect.features import FEATURE_NAMES

log = logging.getLogger(__name__)

FORMAT = "gpt2-serve-judge/1"
JUDGE_FILE = "judge.json"
TOP_FEATURES = 5


class JudgeError(RuntimeError):
    """The judge cannot be used here; the message says why and what to do."""


@dataclass
class ModelIdentity:
    """What a judge knows of the model it was trained on (from GET /v1/models)."""

    name: str  # served name
    source: str  # GPT2_MODEL: a hub id or a directory
    num_parameters: int
    load_format: str

    @property
    def short_name(self) -> str:
        """The hub id's or directory's last part: "openai-community/gpt2" -> "gpt2", "/models/demo" -> "demo"."""
        return Path(self.source.rstrip("/")).name or self.source


@dataclass
class Judge:
    name: str
    model: ModelIdentity
    feature_names: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    calibration: tuple[float, float]  # Platt's (a, c)
    threshold: float  # verdict "machine" when machine_probability >= threshold
    created: int = field(default_factory=lambda: int(time.time()))
    training: dict = field(default_factory=dict)  # counts, settings and held-out figures, for people

    def __post_init__(self) -> None:
        self._mean, self._scale = np.asarray(self.mean), np.asarray(self.scale)
        self._coef = np.asarray(self.coef)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Each feature's share of the calibrated log-odds, relative to the average training text
        (rows of x): a * coef * standardised value. They add up to logit(p) - a * intercept - c."""
        return self.calibration[0] * self._coef * (x - self._mean) / self._scale

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated machine probabilities of feature rows x (n, features), or of one row."""
        a, c = self.calibration
        logit = self.contributions(np.asarray(x, dtype=np.float64)).sum(axis=-1) + a * self.intercept + c
        return 0.5 * (1.0 + np.tanh(0.5 * logit))  # the sigmoid, without overflow

    def verdict(self, x: np.ndarray) -> dict:
        """The judge's answer for one input's features, in /v1/score's `detection.judge` shape."""
        parts = self.contributions(x)
        p = float(0.5 * (1.0 + np.tanh(0.5 * (parts.sum() + self.calibration[0] * self.intercept
                                               + self.calibration[1]))))
        top = np.argsort(-np.abs(parts), kind="stable")[:TOP_FEATURES]
        return {"machine_probability": p, "verdict": "machine" if p >= self.threshold else "human",
                "threshold": self.threshold,
                "top_features": [{"name": self.feature_names[i], "value": float(x[i]), "contribution": float(parts[i])}
                                 for i in top]}

    def weights(self) -> list[tuple[str, float]]:
        """Log-odds per standard deviation of each feature (positive: machine), largest first."""
        pairs = zip(self.feature_names, (self.calibration[0] * np.asarray(self.coef)).tolist(), strict=True)
        return sorted(pairs, key=lambda pair: -abs(pair[1]))

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        body = {"format": FORMAT, **asdict(self)}
        path = directory / JUDGE_FILE
        path.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
        return path

    def check_model(self, served: ModelIdentity) -> None:
        """Refuse to judge with another model's scores: its features would mean something else."""
        mine = self.model
        differences = [f"{what} {theirs!r} (the judge's: {ours!r})" for what, ours, theirs in (
            ("model", mine.short_name, served.short_name), ("parameter count", mine.num_parameters,
                                                              served.num_parameters),
            ("load format", mine.load_format, served.load_format)) if ours != theirs]
        if differences:
            raise JudgeError(f"the judge {self.name!r} was trained on the scores of model {mine.source!r}, not on "
                             f"the served model {served.source!r}: {'; '.join(differences)}. Train a judge for this "
                             "model with `gpt2-serve train-detector`, or unset GPT2_DETECTOR")


def load(directory: str | Path) -> Judge:
    """Read a judge saved by Judge.save (a directory holding judge.json, or that file itself)."""
    path = Path(directory)
    if path.is_dir():
        path = path / JUDGE_FILE
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise JudgeError(f"cannot read the judge at {path}: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise JudgeError(f"{path} is not a judge written by `gpt2-serve train-detector` (format {FORMAT})")
    try:
        body.pop("format")
        judge = Judge(**{**body, "model": ModelIdentity(**body["model"]),
                         "calibration": tuple(body["calibration"])})
    except (TypeError, KeyError, ValueError) as exc:
        raise JudgeError(f"{path} is damaged: {exc}") from exc
    if judge.feature_names != list(FEATURE_NAMES):
        raise JudgeError(f"{path} was trained on other features than this version computes; train it again")
    if not all(len(v) == len(FEATURE_NAMES) for v in (judge.mean, judge.scale, judge.coef)):
        raise JudgeError(f"{path} is damaged: its vectors do not have one entry per feature")
    return judge


def load_judge(directory: str | Path | None, info) -> Judge | None:
    """The judge at GPT2_DETECTOR for the served model (`info`: app.engine.protocol.EngineInfo), or None when
    no directory is set. Raises JudgeError when it cannot be read or belongs to another model."""
    if directory is None:
        return None
    judge = load(directory)
    judge.check_model(ModelIdentity(info.name, info.source, info.num_parameters, info.load_format))
    log.info("judge %r loaded from %s (threshold %.3f)", judge.name, directory, judge.threshold)
    return judge
