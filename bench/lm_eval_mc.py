"""lm-evaluation-harness against the server, prefix reuse on and off: same accuracy, less time.

    pip install lm-eval            # in a venv of its own: it is not a dependency of gpt2-serve
    python bench/lm_eval_mc.py --model DIR --corpus eval.jsonl --lm-eval /path/to/venv/bin/lm_eval

Builds a multiple-choice task from a corpus of texts (JSON lines with a "text" field, e.g. the
`make demo` corpus): each item is a passage's first --context tokens, and four continuations of
--choice tokens: the passage's own next tokens, and the same span of three other passages. It
writes the task as an lm-eval YAML task over local JSON (nothing from the hub), then runs
`lm_eval --model local-completions` (echo + logprobs loglikelihood requests, token ids in, the
model's own tokenizer) against two servers of the same model, GPT2_PREFIX_CACHING on and off,
and prints each one's accuracy and wall time.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from app.model.loader import PACKAGED_TOKENIZER  # noqa: E402
from app.model.tokenizer import Tokenizer  # noqa: E402
from bench.serving import start_server  # noqa: E402

TASK = """task: gpt2_serve_continuation
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
"""


def build_items(corpus: Path, tokenizer: Tokenizer, n: int, context: int, choice: int, seed: int) -> list[dict]:
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines() if line.strip()]
    spans = [ids for ids in (tokenizer.encode(t) for t in texts) if len(ids) >= context + choice]
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        own, *others = rng.sample(range(len(spans)), 4)
        start = rng.randrange(len(spans[own]) - context - choice + 1)
        ctx = spans[own][start : start + context]
        truth = spans[own][start + context : start + context + choice]
        distractors = [spans[o][start % (len(spans[o]) - choice) :][:choice] for o in others]
        answer = rng.randrange(4)
        choices = distractors[:answer] + [truth] + distractors[answer:]
        items.append({"context": tokenizer.decode(ctx), "choices": [tokenizer.decode(c) for c in choices],
                      "answer": answer})
    return items


def run(lm_eval: str, url: str, model: str, tokenizer_dir: str, task_dir: str, concurrency: int) -> tuple[float, float]:
    args = [lm_eval, "--model", "local-completions", "--tasks", "gpt2_serve_continuation", "--include_path",
            task_dir, "--model_args",
            f"model={model},base_url={url}/v1/completions,tokenizer={tokenizer_dir},tokenizer_backend=huggingface,"
            f"num_concurrent={concurrency},max_retries=1,tokenized_requests=True,max_length=1024",
            "--output_path", os.path.join(task_dir, "out")]
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    if done.returncode:
        raise SystemExit(f"lm_eval failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    results = json.loads(sorted(Path(task_dir, "out").rglob("results_*.json"), key=os.path.getmtime)[-1].read_text())
    # lm-eval's own evaluation time: without its start-up (imports, reading the task), ~10 s here
    seconds = float(results.get("total_evaluation_time_seconds", time.perf_counter() - start))
    return results["results"]["gpt2_serve_continuation"]["acc,none"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a local Hugging Face GPT-2 directory, or a GPT-2 name "
                        "with --dummy")
    parser.add_argument("--dummy", action="store_true", help="random weights of that name's shapes (speed only: "
                        "accuracy is chance)")
    parser.add_argument("--corpus", required=True, type=Path)
    parser.add_argument("--lm-eval", default="lm_eval", help="the lm_eval command (in its own venv)")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--context", type=int, default=250)
    parser.add_argument("--choice", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = {"GPT2_MODEL": args.model, "GPT2_LOAD_FORMAT": "dummy" if args.dummy else "auto"}
    with tempfile.TemporaryDirectory() as task_dir:
        tokenizer_dir = args.model
        if args.dummy:  # lm-eval's AutoTokenizer needs a tokenizer.json beside the vocabulary
            from transformers import GPT2TokenizerFast

            tokenizer_dir = os.path.join(task_dir, "tokenizer")
            GPT2TokenizerFast.from_pretrained(PACKAGED_TOKENIZER).save_pretrained(tokenizer_dir)
        tokenizer = Tokenizer(tokenizer_dir)
        data = Path(task_dir, "items.jsonl")
        items = build_items(args.corpus, tokenizer, args.items, args.context, args.choice, seed=0)
        data.write_text("".join(json.dumps(item) + "\n" for item in items))
        Path(task_dir, "task.yaml").write_text(TASK.format(data=data))
        servers = {}
        try:
            for name, flag in (("on", "true"), ("off", "false")):
                servers[name] = start_server({**settings, "GPT2_PREFIX_CACHING": flag})
            results = {"on": [], "off": []}
            for r in range(args.repeats):
                for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    results[name].append(run(args.lm_eval, servers[name][1], args.model, tokenizer_dir, task_dir,
                                             args.concurrency))
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(60)
    print(f"# lm-eval local-completions, {args.items} items x 4 choices ({args.context}-token contexts, "
          f"{args.choice}-token choices), {args.concurrency} concurrent requests, model {args.model}")
    for name, runs in results.items():
        accs, walls = [round(a, 4) for a, _ in runs], [round(w, 1) for _, w in runs]
        print(f"prefix caching {name:3s}: acc {accs}  evaluation s {walls}")
    on, off = min(w for _, w in results["on"]), min(w for _, w in results["off"])
    print(f"fastest run: on {on:.1f} s, off {off:.1f} s: {off / on:.2f}x")


if __name__ == "__main__":
    main()
