"""`gpt2-serve train-detector`: train a calibrated judge of human vs machine text on the served
model's per-token scores, report how well it does on held-out texts, and save it for GPT2_DETECTOR.

    gpt2-serve train-detector --human corpus/ --generate 1000 --out judges/demo [--url http://host:8000]

Texts are scored through POST /v1/score (and generated through POST /v1/completions) on the
server at --url or, without it, on the same app built in-process from the GPT2_* settings: the
command line hands this command its way to a server (app/connection.py, as ctx.obj). The output
directory holds judge.json (what the server loads), report.json and report.md (the figures),
roc.png, and dataset.jsonl (the texts and their split).
"""

import sys
from pathlib import Path
from typing import Annotated

import httpx
import typer

from app.detect import data
from app.detect.data import HUMAN, MACHINE, DataError, Example
from app.detect.judge import JudgeError, ModelIdentity
from app.detect.pipeline import train_and_report

MIN_PER_CLASS = 8  # below this, neither the cross-validation nor the held-out figures mean anything


def fail(message: str) -> None:
    """A bad input: one line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def progress(total: int, what: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="text", file=sys.stderr, dynamic_ncols=True)


def train_detector(
    ctx: typer.Context,
    human: Annotated[list[Path], typer.Option(help="Human-written texts: a file (one text per line, or .jsonl), or "
                                              "a directory (each .txt/.md file one text; .jsonl files per line). "
                                              "Repeat the option for several.")],
    out: Annotated[Path, typer.Option(help="Directory to write the judge and its report to.")],
    machine: Annotated[list[Path] | None, typer.Option(help="Machine-written texts, in the same forms.")] = None,
    generate: Annotated[int, typer.Option(min=0, help="Also sample this many machine texts from the served model, "
                                          "prompted with the first tokens of human texts, matched in length.")] = 0,
    decoding: Annotated[list[str] | None, typer.Option(help="Decoding settings for --generate (repeatable): "
                                                       f"{', '.join(data.DECODINGS)}. Default: all.")] = None,
    url: Annotated[str | None, typer.Option(help="A running gpt2-serve; without it the model named by the GPT2_* "
                                            "settings is loaded in this process.")] = None,
    api_key: Annotated[str | None, typer.Option(help="Bearer key for --url.")] = None,
    name: Annotated[str | None, typer.Option(help="The judge's name (default: --out's name).")] = None,
    field: Annotated[str, typer.Option(help="Key of the text in .jsonl objects.")] = "text",
    max_tokens: Annotated[int, typer.Option(min=2, help="Cut every text to its first N tokens.")] = 256,
    min_tokens: Annotated[int, typer.Option(min=2, help="Leave out texts shorter than N tokens.")] = 32,
    chunk: Annotated[bool, typer.Option(help="Split long texts into consecutive --max-tokens pieces instead of "
                                        "keeping only the first (pieces of one text stay on one side of the "
                                        "split).")] = False,
    prompt_tokens: Annotated[int, typer.Option(min=1, help="Tokens of a human text that prompt a generated one "
                                               "(and start it).")] = 16,
    test_fraction: Annotated[float, typer.Option(min=0.05, max=0.9, help="Share held out for the report.")] = 0.25,
    fpr: Annotated[float, typer.Option(min=0.0, max=0.5, help="Operating point: the verdict threshold is the lowest "
                                       "machine_probability that flags at most this share of the training human "
                                       "texts (out of fold), so that the verdict rarely accuses a person.")] = 0.01,
    threshold: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Instead of --fpr: verdict 'machine' at "
                                                    "machine_probability >= this (0.5: even odds).")] = None,
    check_limits: Annotated[bool, typer.Option("--limits/--no-limits", help="Also measure the judge on shorter "
                                               "and word-edited held-out texts (scores them again).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the sampling and the split.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per /v1/score request.")] = 16,
    workers: Annotated[int, typer.Option(min=1, help="Concurrent /v1/completions requests.")] = 16,
    overwrite: Annotated[bool, typer.Option(help="Write into --out even if it is not empty.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each request.")] = 600.0,
) -> dict:
    """Train a judge of human vs machine text on the served model's scores (for GPT2_DETECTOR)."""
    decodings = decoding or list(data.DECODINGS)
    unknown = [d for d in decodings if d not in data.DECODINGS]
    if unknown:
        fail(f"--decoding: unknown setting {unknown[0]!r}; choose from {', '.join(data.DECODINGS)}")
    if not machine and not generate:
        fail("no machine texts: give --machine FILES or --generate N")
    if min_tokens > max_tokens:
        fail(f"--min-tokens ({min_tokens}) exceeds --max-tokens ({max_tokens})")
    if prompt_tokens >= min_tokens:
        fail(f"--prompt-tokens ({prompt_tokens}) must be below --min-tokens ({min_tokens})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        fail(f"--out {out} exists and is not an empty directory; pass --overwrite to write into it")
    try:
        human_texts = data.collect_texts(human, field)
        machine_texts = data.collect_texts(machine or [], field)
    except DataError as exc:
        fail(str(exc))
    if not human_texts:
        fail(f"--human: no texts in {', '.join(map(str, human))}")
    if machine and not machine_texts:
        fail(f"--machine: no texts in {', '.join(map(str, machine))}")

    options = {"max_tokens": max_tokens, "min_tokens": min_tokens, "chunk": chunk, "prompt_tokens": prompt_tokens,
               "decodings": decodings if generate else [], "test_fraction": test_fraction, "seed": seed}
    try:
        with ctx.obj(url, api_key, timeout, detector=None) as client:
            judge, figures = run(client, human_texts, machine_texts, generate, decodings, options,
                                 name or out.resolve().name, threshold, fpr, batch_size, workers, check_limits)
    except typer.Exit:  # a bad input found on the way (a RuntimeError too, for click)
        raise
    except (RuntimeError, httpx.HTTPError) as exc:  # the server failed us, not the input
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from exc
    out.mkdir(parents=True, exist_ok=True)
    judge.save(out)
    figures.write(out)
    print(figures.summary())
    print(f"judge written to {out / 'judge.json'}; serve it with GPT2_DETECTOR={out}")
    return figures.report


def run(client, human_texts: list[str], machine_texts: list[str], generate: int, decodings: list[str],
        options: dict, name: str, threshold: float | None, fpr: float, batch_size: int, workers: int,
        check_limits: bool):
    """Score (and generate) through the API, then train and evaluate: (judge, figures)."""
    max_tokens, min_tokens = options["max_tokens"], options["min_tokens"]
    card = data.served_model(client)
    identity = ModelIdentity(card["id"], card["root"], card["num_parameters"], card["load_format"])
    examples, human_ids = read_examples(client, human_texts, machine_texts, max_tokens, min_tokens, options["chunk"])
    if generate and human_ids:
        with progress(generate, "generating") as bar:
            examples += data.generate(client, human_ids, generate, decodings, options["prompt_tokens"],
                                      options["seed"], workers, bar.update, card["max_model_len"])
    for label, what in ((HUMAN, "human"), (MACHINE, "machine")):
        count = sum(e.label == label for e in examples)
        if count < MIN_PER_CLASS:
            fail(f"only {count} {what} texts of at least {min_tokens} tokens; a judge needs {MIN_PER_CLASS} "
                 "or more of each (a few hundred for figures worth reading)")
    with progress(len(examples), "scoring") as bar:
        results = data.score_texts(client, [e.text for e in examples], batch_size, return_tokens=True,
                                   progress=bar.update)
    try:
        return train_and_report(client, examples, results, identity, name, threshold, fpr, options, batch_size,
                                check_limits)
    except (JudgeError, ValueError) as exc:
        fail(str(exc))


def read_examples(client, human: list[str], machine: list[str], max_tokens: int, min_tokens: int,
                  chunk: bool) -> tuple[list[Example], list[tuple[int, list[int]]]]:
    """The texts cut to the token budget (pieces of one text share its group), as examples, and the
    human ones' (group, token ids)."""
    kept = data.cut(client, human, max_tokens, min_tokens, chunk=chunk)
    examples = [Example(text, HUMAN, "human", i) for i, text, _ in kept]
    examples += [Example(text, MACHINE, "file", len(human) + i)
                 for i, text, _ in data.cut(client, machine, max_tokens, min_tokens, chunk=chunk)]
    return examples, [(i, ids) for i, _, ids in kept]
