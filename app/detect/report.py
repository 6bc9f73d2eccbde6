"""How good a judge is, on held-out texts: AUROC and TPR at 1% FPR, next to every single zero-shot
statistic, per decoding setting, and calibration; as a dict (report.json) and Markdown.

Machine texts are the positives throughout (separation.py's conventions): AUROC is the chance that
a random machine text looks more machine-like than a random human one; TPR at 1% FPR is the share
of machine texts caught by the threshold that flags at most 1% of the human texts.
"""

import numpy as np

from app.detect.separation import auroc, evaluate, flagged, threshold_at_fpr

LOW_FPR = 0.01


def separation(machine: np.ndarray, human: np.ndarray) -> dict:
    """AUROC and TPR at 1% FPR of scores where higher means machine."""
    return {"auroc": auroc(machine, human), "tpr_at_1pct_fpr": flagged(machine, threshold_at_fpr(human, LOW_FPR)),
            "num_machine": int(len(machine)), "num_human": int(len(human))}


def statistics(human: list[dict], machine: list[dict]) -> dict:
    """Each zero-shot statistic's separation (in its usual direction)."""
    return {r.statistic: {"auroc": r.auroc, "tpr_at_1pct_fpr": r.tpr} for r in evaluate(human, machine, LOW_FPR)}


def calibration(p: np.ndarray, y: np.ndarray, bins: int = 10) -> dict:
    """Brier score and expected calibration error (equal-width bins) of probabilities p for labels y."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = sum(abs(p[which == b].mean() - y[which == b].mean()) * np.mean(which == b)
              for b in range(bins) if np.any(which == b))
    return {"brier": float(np.mean((p - y) ** 2)), "ece": float(ece)}


def at_threshold(p: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    """What the verdict does on these texts: the shares of human (FPR) and machine (TPR) texts flagged."""
    return {"threshold": threshold, "fpr": flagged(p[y == 0], threshold), "tpr": flagged(p[y == 1], threshold)}


def best_statistic(stats: dict) -> tuple[str, dict]:
    name = max(stats, key=lambda s: stats[s]["auroc"])
    return name, stats[name]


def markdown(report: dict) -> str:
    """report.json as a page a person reads."""
    lines = [f"# Judge `{report['name']}` on model `{report['model']['source']}`", "",
             f"Held-out: {report['held_out']['num_human']} human and {report['held_out']['num_machine']} machine "
             f"texts (trained on {report['train']['num_human']} and {report['train']['num_machine']}).", "",
             "| detector | AUROC | TPR at 1% FPR |", "| --- | --- | --- |"]
    judge = report["held_out"]
    lines.append(f"| **judge** | **{judge['auroc']:.3f}** | **{judge['tpr_at_1pct_fpr']:.1%}** |")
    for name, row in report["statistics"].items():
        lines.append(f"| {name} | {row['auroc']:.3f} | {row['tpr_at_1pct_fpr']:.1%} |")
    verdict, calibrated = report["verdict"], report["calibration"]
    lines += ["", f"Verdict threshold {verdict['threshold']:.3f}: flags {verdict['fpr']:.1%} of held-out human "
              f"texts and {verdict['tpr']:.1%} of machine texts. Calibration: Brier {calibrated['brier']:.3f}, "
              f"ECE {calibrated['ece']:.3f}.", "", "## Per source of machine text (vs all held-out human "
              "texts)", "", "| source | n | judge AUROC | judge TPR at 1% FPR | best statistic | its AUROC |",
              "| --- | --- | --- | --- | --- | --- |"]
    for source, row in report["per_source"].items():
        lines.append(f"| {source} | {row['num_machine']} | {row['auroc']:.3f} | {row['tpr_at_1pct_fpr']:.1%} | "
                     f"{row['best_statistic']} | {row['best_statistic_auroc']:.3f} |")
    if report.get("generalisation"):
        lines += ["", "## Generalisation: trained without one decoding setting, tested on it", "",
                  "| left out | judge AUROC | judge TPR at 1% FPR | (trained with it: AUROC) |",
                  "| --- | --- | --- | --- |"]
        for source, row in report["generalisation"].items():
            lines.append(f"| {source} | {row['auroc']:.3f} | {row['tpr_at_1pct_fpr']:.1%} | "
                         f"{report['per_source'][source]['auroc']:.3f} |")
    if report.get("limits"):
        lines += ["", "## Limits measured on the held-out texts", ""]
        for name, rows in report["limits"].items():
            lines += [f"### {name}", "", "| setting | judge AUROC | judge TPR at 1% FPR | verdict TPR | verdict FPR |",
                      "| --- | --- | --- | --- | --- |"]
            lines += [f"| {k} | {r['auroc']:.3f} | {r['tpr_at_1pct_fpr']:.1%} | {r['verdict_tpr']:.1%} | "
                      f"{r['verdict_fpr']:.1%} |" for k, r in rows.items()]
            lines.append("")
    lines += ["", "## Weights (log-odds per standard deviation of each feature; positive = machine)", ""]
    lines += [f"- {name}: {weight:+.3f}" for name, weight in report["weights"]]
    return "\n".join(lines) + "\n"
