"""`gpt2-serve calibrate`: how well each detection statistic separates two labelled sets of texts.

    gpt2-serve calibrate --human human.txt --machine machine.jsonl [--url http://host:8000] [--fpr 0.05]
                         [--plot roc.png]

Both sets are scored through POST /v1/score (sliding window, so long texts work), on the server at
--url or, without it, on the same app in-process: the command line hands this command its way to
a server (app/connection.py, as ctx.obj). For each statistic it prints the AUROC and the threshold
that flags at most --fpr of the human texts as machine-written, with the share of machine texts it
catches (separation.py). Thresholds only mean something for the model, the kind of text and the
lengths they were calibrated on (docs/scoring.md).
"""

import json
from pathlib import Path
from typing import Annotated

import typer

from app.detect.data import read_texts, score_texts
from app.detect.separation import Row, evaluate, plot_roc


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
    ctx: typer.Context,
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
    with ctx.obj(url, api_key, timeout) as client:
        human_scores = score_texts(client, human_texts, batch_size)
        machine_scores = score_texts(client, machine_texts, batch_size)
    rows = evaluate(human_scores, machine_scores, fpr)
    if json_output:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        print(f"{len(human_texts)} human and {len(machine_texts)} machine texts")
        print(format_table(rows, fpr))
    if plot is not None:
        plot_roc(plot, "ROC of the detection statistics", human_scores, machine_scores)
        if not json_output:
            print(f"ROC curves written to {plot}")
    return rows
