"""`gpt2-serve calibrate`: how well each detection statistic separates two labelled sets of texts.

    gpt2-serve calibrate --human human.txt --machine machine.jsonl [--url http://host:8000] [--fpr 0.05]
                         [--plot roc.png]

Both sets are scored through POST /v1/score (sliding window, so long texts work): on the server
at --url, or, without --url, on an in-process instance of the same app built from the GPT2_*
settings (same route, same numbers; it loads the model in this process). For each statistic it
prints the AUROC and the threshold that flags at most --fpr of the human texts as machine-written,
with the share of machine texts it catches. Thresholds only mean something for the model, the
kind of text and the lengths they were calibrated on (docs/scoring.md).

The maths (AUROC, thresholds, reading the files) are plain functions, tested without a model.
"""

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer


@dataclass(frozen=True)
class Statistic:
    name: str
    get: Callable[[dict], float | None]  # from one /v1/score result
    higher_is_machine: bool


def _detection(key: str) -> Callable[[dict], float | None]:
    return lambda r: (r.get("detection") or {}).get(key)


def _gltr(key: str) -> Callable[[dict], float | None]:
    return lambda r: ((r.get("detection") or {}).get("gltr") or {}).get(key)


# which way each statistic points for machine-written text (the usual finding; a statistic whose
# AUROC comes out below 0.5 on your data points the other way there)
STATISTICS = (
    Statistic("fast_detect_gpt", _detection("fast_detect_gpt"), True),
    Statistic("mean_logprob", lambda r: r.get("mean_logprob"), True),
    Statistic("perplexity", lambda r: r.get("perplexity"), False),
    Statistic("mean_log_rank", _detection("mean_log_rank"), False),
    Statistic("gltr_top_10", _gltr("top_10"), True),
    Statistic("gltr_rest", _gltr("rest"), False),
    Statistic("mean_entropy", _detection("mean_entropy"), False),
)


# --- the maths -----------------------------------------------------------------------------------
def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties sharing the average of their ranks (as scipy's rankdata)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # average of ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(positive: list[float] | np.ndarray, negative: list[float] | np.ndarray) -> float:
    """Area under the ROC curve of `score > threshold` flagging positives: the probability that a
    random positive scores above a random negative, ties counting one half (Mann-Whitney U)."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("both sets need at least one value")
    ranks = average_ranks(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def threshold_at_fpr(positive: list[float] | np.ndarray, negative: list[float] | np.ndarray,
                     fpr: float) -> tuple[float, float, float]:
    """The threshold t for the rule `score > t` that flags at most `fpr` of the negatives, with the
    fewest negatives it may flag taken as floor(fpr * n). Returns (t, the negatives' flagged share,
    the positives' flagged share)."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if not 0.0 <= fpr < 1.0:
        raise ValueError("fpr must lie in [0, 1)")
    ordered = np.sort(neg)[::-1]  # descending
    allowed = math.floor(fpr * len(neg) + 1e-9)
    threshold = float(ordered[allowed]) if allowed < len(ordered) else float(ordered[-1])
    return threshold, float(np.mean(neg > threshold)), float(np.mean(pos > threshold))


def roc_curve(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of `score > t` over every threshold, from (0, 0)."""
    thresholds = np.unique(np.concatenate([positive, negative]))[::-1]
    fpr = np.array([0.0, *((negative >= t).mean() for t in thresholds)])
    tpr = np.array([0.0, *((positive >= t).mean() for t in thresholds)])
    return fpr, tpr


@dataclass
class Row:
    statistic: str
    direction: str  # "higher" or "lower": which way flags machine text
    auroc: float
    threshold: float  # in the statistic's own units
    fpr: float  # the human texts' share flagged at that threshold
    tpr: float  # the machine texts' share flagged
    num_human: int
    num_machine: int


def evaluate(human: list[dict], machine: list[dict], fpr: float = 0.05) -> list[Row]:
    """One row per statistic from the /v1/score results of the two sets (machine = positive).
    Inputs for which a statistic is null (e.g. a one-token text) are left out of its row."""
    rows = []
    for stat in STATISTICS:
        sign = 1.0 if stat.higher_is_machine else -1.0
        h = np.array([sign * v for v in map(stat.get, human) if v is not None and math.isfinite(v)])
        m = np.array([sign * v for v in map(stat.get, machine) if v is not None and math.isfinite(v)])
        if len(h) == 0 or len(m) == 0:
            continue
        threshold, flagged_human, flagged_machine = threshold_at_fpr(m, h, fpr)
        rows.append(Row(stat.name, "higher" if stat.higher_is_machine else "lower", auroc(m, h), sign * threshold,
                        flagged_human, flagged_machine, len(h), len(m)))
    return rows


def read_texts(path: Path, field: str = "text") -> list[str]:
    """One text per line; or, for a .jsonl/.ndjson file, one JSON string or object (its `field`)
    per line. Blank lines are skipped."""
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if not jsonl:
            texts.append(line)
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc})") from exc
        if isinstance(value, dict):
            if field not in value:
                raise ValueError(f"{path}:{number}: no {field!r} key in the JSON object")
            value = value[field]
        if not isinstance(value, str):
            raise ValueError(f"{path}:{number}: expected a string or an object with {field!r}")
        texts.append(value)
    return texts


# --- scoring through the API ------------------------------------------------------------------
@contextmanager
def score_client(url: str | None, api_key: str | None, timeout: float, **overrides) -> Iterator:
    """An httpx-style client whose POST /v1/score reaches the server at `url`, or an in-process
    app built from the GPT2_* settings and `overrides` (loaded and ready when this yields)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if url is not None:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout) as client:
            yield client
        return
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app

    settings = Settings(**overrides)
    if settings.api_keys and not api_key:
        headers = {"Authorization": f"Bearer {settings.api_keys[0]}"}
    app = create_app(settings)
    with TestClient(app, headers=headers) as client:  # runs the lifespan: loads the model
        state = app.state.gpt2
        while not state.ready:
            if state.load_error is not None:
                raise RuntimeError(f"the model failed to load: {state.load_error}")
            time.sleep(0.1)
        yield client


def score_texts(client, texts: list[str], batch_size: int, return_tokens: bool = False,
                progress: Callable[[int], object] | None = None) -> list[dict]:
    """The /v1/score result of every text (sliding window for long ones; numbers only unless
    `return_tokens`). `progress(n)` is called after each batch of n texts."""
    results = []
    for start in range(0, len(texts), batch_size):
        body = {"input": texts[start : start + batch_size], "return_tokens": return_tokens, "window": "sliding"}
        response = client.post("/v1/score", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"POST /v1/score answered {response.status_code}: {response.text}")
        results += response.json()["data"]
        if progress is not None:
            progress(len(body["input"]))
    return results


def plot_roc(path: Path, human: list[dict], machine: list[dict], rows: list[Row]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'gpt2-serve[plot]'") from exc
    by_name = {s.name: s for s in STATISTICS}
    fig, ax = plt.subplots(figsize=(6, 6))
    for row in rows:
        stat = by_name[row.statistic]
        sign = 1.0 if stat.higher_is_machine else -1.0
        h = np.array([sign * v for v in map(stat.get, human) if v is not None])
        m = np.array([sign * v for v in map(stat.get, machine) if v is not None])
        fpr, tpr = roc_curve(m, h)
        ax.plot(fpr, tpr, label=f"{row.statistic} (AUROC {row.auroc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false-positive rate (human texts flagged)", ylabel="true-positive rate (machine texts flagged)",
           title="ROC of the detection statistics", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(rows: list[Row], fpr: float) -> str:
    lines = [f"{'statistic':<16} {'machine if':<11} {'AUROC':>6} {'threshold':>11} {'FPR':>6} {'TPR':>6}",
             "-" * 61]
    for r in rows:
        rule = "above" if r.direction == "higher" else "below"
        lines.append(f"{r.statistic:<16} {rule:<11} {r.auroc:6.3f} {r.threshold:11.4g} {r.fpr:6.1%} {r.tpr:6.1%}")
    lines.append(f"(machine if the statistic is above/below its threshold, chosen to flag at most {fpr:.1%} of the "
                 "human texts; FPR/TPR as measured on these sets)")
    return "\n".join(lines)


def calibrate(
    human: Annotated[Path, typer.Option(help="Human-written texts: one per line, or .jsonl (strings or "
                                        "objects with a `text` key).", exists=True, dir_okay=False)],
    machine: Annotated[Path, typer.Option(help="Machine-written texts, in the same format.", exists=True,
                                          dir_okay=False)],
    url: Annotated[str | None, typer.Option(help="A running gpt2-serve (e.g. http://localhost:8000); without it "
                                            "the model named by GPT2_* settings is loaded in this process.")] = None,
    fpr: Annotated[float, typer.Option(min=0.0, max=0.99, help="False-positive rate to choose thresholds at.")]
    = 0.05,
    plot: Annotated[Path | None, typer.Option(help="Draw the ROC curves to this PNG (needs the `plot` extra: "
                                              "matplotlib).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per /v1/score request.")] = 32,
    field: Annotated[str, typer.Option(help="Key of the text in .jsonl objects.")] = "text",
    api_key: Annotated[str | None, typer.Option(help="Bearer key for --url (GPT2_API_KEYS of that server).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead of a table.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each request.")] = 600.0,
) -> list[Row]:
    """Score labelled human and machine texts; print each detection statistic's AUROC and threshold."""
    if plot is not None:  # fail before scoring anything
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise typer.BadParameter("needs matplotlib: pip install 'gpt2-serve[plot]'", param_hint="--plot") from exc
    human_texts, machine_texts = read_texts(human, field), read_texts(machine, field)
    for name, texts in (("--human", human_texts), ("--machine", machine_texts)):
        if not texts:
            raise typer.BadParameter("the file holds no texts", param_hint=name)
    with score_client(url, api_key, timeout) as client:
        human_scores = score_texts(client, human_texts, batch_size)
        machine_scores = score_texts(client, machine_texts, batch_size)
    rows = evaluate(human_scores, machine_scores, fpr)
    if json_output:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        print(f"{len(human_texts)} human and {len(machine_texts)} machine texts")
        print(format_table(rows, fpr))
    if plot is not None:
        plot_roc(plot, human_scores, machine_scores, rows)
        if not json_output:
            print(f"ROC curves written to {plot}")
    return rows
