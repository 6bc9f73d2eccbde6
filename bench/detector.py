"""The trained judge, measured: its serving cost, and whether a neural detector adds enough to ship.

    python bench/detector.py throughput [--model DIR] [--judge DIR] [--texts 16] [--tokens 256]
                                        [--requests 8] [--concurrency 4] [--repeats 5]
    python bench/detector.py neural --data JUDGE_DIR --model DIR [--epochs 2] [--max-length 256]
    python bench/detector.py generators --data JUDGE_DIR --model DIR [--generator DIR --decoding temp-1.0 ...]
                                        [--markov corpus.jsonl]

throughput: one server (uvicorn in this process) scores the same texts through POST /v1/score
(detect=true) with the judge switched on and off between rounds, alternating the order, so both
sides share the machine's noise; it reports the best and median scored tokens/s of each and their
ratio. Without --judge a judge with random weights stands in (the same arithmetic as a trained one).

neural: on a train-detector output directory (its dataset.jsonl: texts, labels, split, features),
compares on the same held-out texts: the judge; a linear probe on the model's mean-pooled last
hidden states; the probe plus the judge's features; and GPT2ForSequenceClassification fine-tuned
from the model's weights with transformers' Trainer. AUROC and TPR at 1% FPR, and the time each took.

generators: the judge (served with GPT2_DETECTOR) on machine texts it was not trained on: other
models' samples, prompted like train-detector's, and a word-bigram chain fitted on a corpus,
against the held-out human texts of its dataset.
"""

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from app.config import Settings  # noqa: E402
from app.detect.features import FEATURE_NAMES  # noqa: E402
from app.detect.judge import Judge, ModelIdentity, load  # noqa: E402
from app.detect.report import separation  # noqa: E402
from app.detect.separation import auroc  # noqa: E402


# --- throughput ------------------------------------------------------------------------------------
def stand_in_judge(info) -> Judge:
    rng = np.random.default_rng(0)
    n = len(FEATURE_NAMES)
    return Judge("random stand-in", ModelIdentity(info.name, info.source, info.num_parameters, info.load_format),
                 list(FEATURE_NAMES), [0.0] * n, [1.0] * n, rng.normal(size=n).tolist(), 0.0, (1.0, 0.0), 0.5)


def throughput(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from score import Server

    settings = Settings(model=args.model, load_format=args.load_format, device="cpu", max_batch_size=args.texts,
                        max_queue=1024, log_format="text", log_level="WARNING", metrics=False,
                        detector=args.judge)
    server = Server(settings)
    service = server.app.state.gpt2.service
    judge = service.judge or stand_in_judge(service.info)
    rng = np.random.default_rng(1)
    vocab = service.tokenizer.vocab_size
    batches = [rng.integers(0, vocab, (args.texts, args.tokens)).tolist() for _ in range(args.requests)]
    tokens = args.requests * args.texts * (args.tokens - 1)  # scored tokens per round
    body = {"detect": True, "return_tokens": args.return_tokens}

    def post(texts):
        response = server.client.post("/v1/score", json={"input": texts, **body})
        assert response.status_code == 200, response.text
        return response.json()

    def one_round() -> tuple[float, float]:
        """(scored tokens per second of wall time, per second of this process's CPU time)."""
        start, cpu = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(post, batches))
        return tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu)

    rates = {"with judge": [], "without judge": []}
    cpu_rates = {"with judge": [], "without judge": []}
    modes = [("with judge", judge), ("without judge", None)]
    service.judge = judge
    assert post(batches[0][:1])["data"][0]["detection"]["judge"] is not None  # the judge really answers
    one_round()  # warm-up
    for r in range(args.repeats):
        for name, value in modes if r % 2 == 0 else modes[::-1]:
            service.judge = value
            wall, cpu = one_round()
            rates[name].append(wall)
            cpu_rates[name].append(cpu)
            print(f"round {r + 1}/{args.repeats} {name:<14} {wall:9.1f} tok/s", file=sys.stderr, flush=True)
    server.stop()
    print(f"# {service.info.source} ({args.load_format}); judge {judge.name!r}; {args.requests} requests x "
          f"{args.texts} texts x {args.tokens} tokens per round, {args.concurrency} at a time, return_tokens="
          f"{args.return_tokens}; {args.repeats} rounds each, alternating; load average {os.getloadavg()[0]:.1f}")
    for name, values in rates.items():
        print(f"{name:<14} wall: best {max(values):9.1f} tok/s, median {statistics.median(values):9.1f} tok/s;"
              f"  per CPU second: median {statistics.median(cpu_rates[name]):9.1f} tok")
    with_, without = rates["with judge"], rates["without judge"]
    print(f"with / without, wall: best {max(with_) / max(without):.1%}, median "
          f"{statistics.median(with_) / statistics.median(without):.1%}; per CPU second: median "
          f"{statistics.median(cpu_rates['with judge']) / statistics.median(cpu_rates['without judge']):.1%}")
    cost = judge_cost(judge, args.tokens)
    print(f"the judge alone (features + verdict of one {args.tokens}-token input): {cost:.0f} µs")


def judge_cost(judge: Judge, tokens: int, repeats: int = 2000) -> float:
    """Microseconds per input of what the route adds with a judge (best of 5 runs of `repeats`)."""
    from app.api.score import judge_verdict
    from app.engine.protocol import PromptScores

    rng = np.random.default_rng(2)
    scores = PromptScores(token_logprobs=(-rng.exponential(3, tokens)).tolist(),
                          ranks=rng.integers(1, 5000, tokens).tolist(), entropy=rng.uniform(1, 8, tokens).tolist(),
                          logprob_variance=rng.uniform(1, 5, tokens).tolist())
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            judge_verdict(judge, scores)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best * 1e6


# --- neural alternatives ---------------------------------------------------------------------------
def fit_linear(x_train, y_train, x_test, seed: int = 0) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced")),
                          {"logisticregression__C": np.logspace(-4, 1, 11)}, cv=5, scoring="roc_auc")
    return search.fit(x_train, y_train).predict_proba(x_test)[:, 1]


def pooled_hidden_states(model_dir: str, texts: list[str], max_length: int) -> np.ndarray:
    import torch
    from transformers import AutoTokenizer, GPT2Model

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = GPT2Model.from_pretrained(model_dir).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
            hidden = model(**ids).last_hidden_state[0]  # [T, C]
            rows.append(torch.cat([hidden.mean(0), hidden[-1]]).numpy())
    return np.stack(rows)


def fine_tune(model_dir: str, train: list[dict], test: list[dict], args) -> np.ndarray:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoTokenizer,
        DataCollatorWithPadding,
        GPT2ForSequenceClassification,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    model = GPT2ForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model.config.pad_token_id = tokenizer.pad_token_id

    def encode(rows):
        data = Dataset.from_list([{"text": r["text"], "label": r["label"]} for r in rows])
        return data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length), batched=True,
                        remove_columns=["text"])

    training = TrainingArguments(output_dir=args.scratch, num_train_epochs=args.epochs, learning_rate=args.lr,
                                 per_device_train_batch_size=16, per_device_eval_batch_size=32, warmup_steps=0.1,
                                 weight_decay=0.01, logging_steps=20, save_strategy="no", report_to=[],
                                 seed=0, use_cpu=not torch.cuda.is_available())
    trainer = Trainer(model=model, args=training, train_dataset=encode(train),
                      data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    logits = trainer.predict(encode(test)).predictions
    return torch.softmax(torch.tensor(logits), dim=-1)[:, 1].numpy()


def neural(args) -> None:
    from app.detect.data import read_dataset

    rows = read_dataset(Path(args.data) / "dataset.jsonl")
    judge = load(args.data)
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    y_train = np.array([r["label"] for r in train])
    y_test = np.array([r["label"] for r in test])
    f_train = np.array([r["features"] for r in train])
    f_test = np.array([r["features"] for r in test])
    results = {}

    sources = np.array([r["source"] for r in test])

    def record(name: str, p: np.ndarray, seconds: float) -> None:
        results[name] = {**separation(p[y_test == 1], p[y_test == 0]), "seconds": seconds}
        per_source = "  ".join(f"{s} {auroc(p[sources == s], p[y_test == 0]):.3f}"
                               for s in sorted(set(sources[y_test == 1])))
        print(f"{name:<34} AUROC {results[name]['auroc']:.3f}  TPR at 1% FPR "
              f"{results[name]['tpr_at_1pct_fpr']:6.1%}  ({seconds:.0f} s)  | {per_source}", flush=True)

    print(f"# {len(train)} training and {len(test)} held-out texts from {args.data}; model {args.model}")
    record("judge (trained by train-detector)", judge.predict_proba(f_test), 0.0)
    start = time.perf_counter()
    hidden = pooled_hidden_states(args.model, [r["text"] for r in rows], args.max_length)
    h_train = hidden[[r["split"] == "train" for r in rows]]
    h_test = hidden[[r["split"] == "test" for r in rows]]
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    record("probe on hidden states", fit_linear(h_train, y_train, h_test), seconds + time.perf_counter() - start)
    start = time.perf_counter()
    record("probe + judge features", fit_linear(np.hstack([h_train, f_train]), y_train, np.hstack([h_test, f_test])),
           seconds + time.perf_counter() - start)
    if args.epochs > 0:
        start = time.perf_counter()
        record(f"fine-tuned classifier ({args.epochs} ep)", fine_tune(args.model, train, test, args),
               time.perf_counter() - start)


# --- other generators ------------------------------------------------------------------------------
def markov_texts(corpus: list[str], count: int, words: int, seed: int) -> list[str]:
    """Texts from a word-bigram chain fitted on `corpus`: machine-made, but by a generator unlike GPT-2."""
    import random
    from collections import defaultdict

    rng = random.Random(seed)
    following = defaultdict(list)
    tokens = [w for text in corpus for w in text.split()]
    for a, b in zip(tokens, tokens[1:], strict=False):
        following[a].append(b)
    out = []
    for _ in range(count):
        word = rng.choice(tokens)
        text = [word]
        for _ in range(words - 1):
            word = rng.choice(following.get(word) or tokens)
            text.append(word)
        out.append(" ".join(text))
    return out


def other_generators(args) -> None:
    """The judge on machine texts from generators it was not trained on, against its held-out human texts."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from score import Server

    from app.detect.data import DECODINGS, collect_texts, generate, read_dataset

    rows = read_dataset(Path(args.data) / "dataset.jsonl")
    human = [r["text"] for r in rows if r["split"] == "test" and r["label"] == 0]
    options = json.loads((Path(args.data) / "report.json").read_text())["options"]
    common = dict(device="cpu", max_queue=1024, log_format="text", log_level="WARNING", metrics=False)
    machine: dict[str, list[str]] = {}
    for generator in args.generator:
        server = Server(Settings(model=generator, **common))
        ids = [(i, server.client.post("/tokenize", json={"prompt": t}).json()["tokens"]) for i, t in enumerate(human)]
        for decoding in args.decoding:
            if decoding not in DECODINGS:
                raise SystemExit(f"unknown decoding {decoding!r}")
            texts = generate(server.client, ids, len(ids), [decoding], options["prompt_tokens"], 7, 16)
            machine[f"{Path(generator).name} {decoding}"] = [e.text for e in texts]
        server.stop()
    if args.markov:
        words = int(np.median([len(t.split()) for t in human]))
        machine[f"word-bigram chain ({words} words)"] = markov_texts(collect_texts([Path(args.markov)]), len(human),
                                                                     words, seed=7)
    server = Server(Settings(model=args.model, detector=args.data, **common))

    def probabilities(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), 16):
            body = {"input": texts[start : start + 16], "return_tokens": False, "window": "sliding"}
            out += [r["detection"]["judge"]["machine_probability"]
                    for r in server.client.post("/v1/score", json=body).json()["data"]]
        return np.array(out)

    p_human = probabilities(human)
    threshold = server.app.state.gpt2.service.judge.threshold
    print(f"# judge {args.data} on model {args.model}; {len(human)} held-out human texts "
          f"(flagged at its threshold: {np.mean(p_human >= threshold):.1%})")
    for name, texts in machine.items():
        p = probabilities(texts)
        row = separation(p, p_human)
        print(f"{name:<36} AUROC {row['auroc']:.3f}  TPR at 1% FPR {row['tpr_at_1pct_fpr']:6.1%}  "
              f"verdict 'machine' {np.mean(p >= threshold):6.1%}  (n={len(texts)})", flush=True)
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("throughput", help="/v1/score tokens/s with and without the judge")
    bench.add_argument("--model", default="gpt2", help="GPT2_MODEL (a directory, or a name with --load-format dummy)")
    bench.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    bench.add_argument("--judge", default=None, help="a judge directory for --model (default: a random stand-in)")
    bench.add_argument("--texts", type=int, default=16, help="texts per request")
    bench.add_argument("--tokens", type=int, default=256, help="tokens per text")
    bench.add_argument("--requests", type=int, default=8, help="requests per round")
    bench.add_argument("--concurrency", type=int, default=4)
    bench.add_argument("--repeats", type=int, default=5, help="rounds of each")
    bench.add_argument("--return-tokens", action="store_true")
    probe = sub.add_parser("neural", help="probe and fine-tuned classifier vs the judge, same split")
    probe.add_argument("--data", required=True, help="a train-detector output directory")
    probe.add_argument("--model", required=True, help="the model's Hugging Face directory")
    probe.add_argument("--epochs", type=float, default=2.0, help="fine-tuning epochs (0: skip fine-tuning)")
    probe.add_argument("--lr", type=float, default=5e-5)
    probe.add_argument("--max-length", type=int, default=256)
    probe.add_argument("--scratch", default="/tmp/detector-finetune", help="Trainer's output directory")
    other = sub.add_parser("generators", help="the judge on texts of generators it was not trained on")
    other.add_argument("--data", required=True, help="a train-detector output directory")
    other.add_argument("--model", required=True, help="the model the judge belongs to (GPT2_MODEL)")
    other.add_argument("--generator", action="append", default=[], help="another model directory (repeatable)")
    other.add_argument("--decoding", action="append", default=[], help="decoding settings for --generator")
    other.add_argument("--markov", default=None, help="a corpus file: also test a word-bigram chain fitted on it")
    args = parser.parse_args()
    {"throughput": throughput, "neural": neural, "generators": other_generators}[args.command](args)


if __name__ == "__main__":
    main()
