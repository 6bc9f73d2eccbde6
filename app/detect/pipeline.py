"""From scored examples to a judge and its figures: features, held-out split, fit, evaluation
against every zero-shot statistic, per decoding setting, generalisation to unseen settings, limits."""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.detect import limits, report
from app.detect.data import HUMAN, MACHINE, Example, write_dataset
from app.detect.features import from_result
from app.detect.judge import Judge, ModelIdentity
from app.detect.separation import plot_roc
from app.detect.train import fit, split


@dataclass
class Figures:
    report: dict
    examples: list[Example]
    test: np.ndarray  # held-out mask over examples
    features: np.ndarray  # (examples, features)
    probabilities: np.ndarray  # the judge's, over held-out examples
    labels: np.ndarray  # over held-out examples
    human_results: list[dict] = field(default_factory=list)  # held-out /v1/score results
    machine_results: list[dict] = field(default_factory=list)

    def write(self, out: Path) -> None:
        (out / "report.json").write_text(json.dumps(self.report, indent=1) + "\n", encoding="utf-8")
        (out / "report.md").write_text(report.markdown(self.report), encoding="utf-8")
        write_dataset(out / "dataset.jsonl", self.examples, self.test.tolist(), self.features.tolist())
        p, y = self.probabilities, self.labels
        plot_roc(out / "roc.png", f"Held-out ROC: judge {self.report['name']!r} vs zero-shot statistics",
                 self.human_results, self.machine_results, judge=(p[y == 1], p[y == 0]), mark_fpr=report.LOW_FPR)

    def summary(self) -> str:
        r = self.report
        best, row = report.best_statistic(r["statistics"])
        judge = r["held_out"]
        lines = [f"held-out: {judge['num_human']} human, {judge['num_machine']} machine texts",
                 f"judge:          AUROC {judge['auroc']:.3f}  TPR at 1% FPR {judge['tpr_at_1pct_fpr']:.1%}",
                 f"best statistic: AUROC {row['auroc']:.3f}  TPR at 1% FPR {row['tpr_at_1pct_fpr']:.1%}  ({best})"]
        lines += [f"  {source:<12} AUROC {v['auroc']:.3f}  TPR at 1% FPR {v['tpr_at_1pct_fpr']:.1%}"
                  for source, v in r["per_source"].items()]
        return "\n".join(lines)


def train_and_report(client, examples: list[Example], results: list[dict], identity: ModelIdentity, name: str,
                     threshold: float | None, fpr: float, options: dict, batch_size: int,
                     check_limits: bool) -> tuple[Judge, Figures]:
    rows = [from_result(r) for r in results]
    keep = [i for i, x in enumerate(rows) if x is not None]  # a text may score nothing (one token)
    examples, results = [examples[i] for i in keep], [results[i] for i in keep]
    x = np.stack([rows[i] for i in keep])
    y = np.array([e.label for e in examples])
    groups = np.array([e.group for e in examples])
    sources = np.array([e.source for e in examples])
    seed = options["seed"]
    test = split(y, groups, options["test_fraction"], seed)
    train = ~test
    counts = {"num_human": int(np.sum(y[train] == HUMAN)), "num_machine": int(np.sum(y[train] == MACHINE))}
    judge = fit(x[train], y[train], groups[train], name, identity, threshold=threshold, fpr=fpr, seed=seed,
                training={**counts, "options": options})

    p = judge.predict_proba(x[test])
    y_test, sources_test = y[test], sources[test]
    results_test = [r for r, t in zip(results, test, strict=True) if t]
    human_results = [r for r, label in zip(results_test, y_test, strict=True) if label == HUMAN]
    machine_results = [r for r, label in zip(results_test, y_test, strict=True) if label == MACHINE]
    held_out = report.separation(p[y_test == MACHINE], p[y_test == HUMAN])
    stats = report.statistics(human_results, machine_results)
    best, best_row = report.best_statistic(stats)
    out = {"name": name, "model": identity.__dict__, "options": options, "train": counts, "held_out": held_out,
           "statistics": stats, "best_statistic": {"name": best, **best_row},
           "verdict": report.at_threshold(p, y_test, judge.threshold),
           "calibration": report.calibration(p, y_test.astype(float)),
           "per_source": per_source(p, y_test, sources_test, human_results, results_test),
           "weights": judge.weights()}
    out["generalisation"] = generalisation(x, y, groups, sources, test, identity, seed)
    if check_limits:
        texts = [e.text for e, t in zip(examples, test, strict=True) if t]
        out["limits"] = {
            "short texts": limits.short_texts(client, judge, texts, y_test, batch_size),
            "edited machine texts": limits.edited(judge, client, [t for t, lab in zip(texts, y_test, strict=True)
                                                                   if lab == HUMAN],
                                                  [t for t, lab in zip(texts, y_test, strict=True) if lab == MACHINE],
                                                  batch_size, seed)}
    judge.training.update({"held_out": held_out, "best_statistic": out["best_statistic"]})
    return judge, Figures(out, examples, test, x, p, y_test, human_results, machine_results)


def per_source(p: np.ndarray, y: np.ndarray, sources: np.ndarray, human_results: list[dict],
               results: list[dict]) -> dict:
    """The judge and the best statistic on each source of machine text, against all human texts."""
    rows = {}
    for source in sorted(set(sources[y == MACHINE])):
        mask = (y == MACHINE) & (sources == source)
        machine_results = [r for r, m in zip(results, mask, strict=True) if m]
        best, best_row = report.best_statistic(report.statistics(human_results, machine_results))
        rows[source] = {**report.separation(p[mask], p[y == HUMAN]), "best_statistic": best,
                        "best_statistic_auroc": best_row["auroc"]}
    return rows


def generalisation(x: np.ndarray, y: np.ndarray, groups: np.ndarray, sources: np.ndarray, test: np.ndarray,
                   identity: ModelIdentity, seed: int) -> dict:
    """For each decoding setting: a judge trained without that setting's texts, tested on them."""
    machine_sources = sorted(set(sources[y == MACHINE]) - {"file"})
    if len(machine_sources) < 2:
        return {}
    rows = {}
    for left_out in machine_sources:
        train = ~test & (sources != left_out)
        judge = fit(x[train], y[train], groups[train], f"without {left_out}", identity, seed=seed)
        target = test & (sources == left_out)
        human = test & (y == HUMAN)
        rows[left_out] = report.separation(judge.predict_proba(x[target]), judge.predict_proba(x[human]))
    return rows
