"""What `explain` adds to /v1/score, in one run: the same texts scored with and without it.

    python bench/explain.py [--model gpt2] [--tokens 256] [--texts 1] [--repeats 5] [--no-http]

Everything runs in this process on the same model (dummy weights, GPT-2 small shapes by default):

- engine: the texts as prefill-only score requests (logprobs, ranks, detect's statistics) through
  the engine's step loop on this thread, without explain and with each explain setting below;
- http: POST /v1/score of the same token ids to a uvicorn server in this process (return_tokens,
  detect), the same settings: adds building and sending the explanation's JSON.

Settings: the API's default explain (attention_top_k 5, lens_top_k 5) for every position;
attention only (lens_top_k 0); the logit lens only (attention_top_k 0); and what the page asks for
(attention_top_k 16, lens_top_k 3). Reported: seconds (best and median of --repeats, runs
interleaved so that a noisy machine hurts all alike) and their ratios to the same request without
explain.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.engine.process import prepare_engine_environment  # noqa: E402

prepare_engine_environment()  # as the engine process does, before torch is imported

import torch  # noqa: E402

from app.config import Settings  # noqa: E402
from app.engine.process import build_core  # noqa: E402
from app.engine.protocol import EngineRequest, ExplainParams, SamplingParams  # noqa: E402
from bench.score import Server  # noqa: E402

SETTINGS = {"no explain": None,
            "explain (defaults: attention 5, lens 5)": {"attention_top_k": 5, "lens_top_k": 5},
            "attention only (top 5)": {"attention_top_k": 5, "lens_top_k": 0},
            "logit lens only (top 5)": {"attention_top_k": 0, "lens_top_k": 5},
            "as the page asks (16, 3)": {"attention_top_k": 16, "lens_top_k": 3}}


def engine_run(core, texts: list[list[int]], explain: dict | None) -> tuple[float, float]:
    """The texts as score requests (detect on), explaining every position, through the core's step
    loop. Returns (wall seconds, CPU seconds of this process: all its threads, whatever else runs)."""
    start, cpu = time.perf_counter(), time.process_time()
    for i, text in enumerate(texts):
        params = SamplingParams(max_tokens=0, temperature=0.0, prompt_logprobs=0, prompt_stats=True)
        if explain is not None:
            params.explain = ExplainParams(list(range(len(text))), **explain)
        core.add(EngineRequest(f"e{i}-{time.monotonic_ns()}", text, params, time.monotonic()))
    while core.has_unfinished():
        for output in core.step()[0]:
            assert output.finished and len(output.prompt_scores.token_logprobs) == len(texts[0]) - 1
            assert explain is None or len(output.readout.explanation) == len(texts[0])
    return time.perf_counter() - start, time.process_time() - cpu


def http_run(server: Server, texts: list[list[int]], explain: dict | None) -> tuple[float, None]:
    body = {"input": texts, "detect": True} | ({"explain": explain} if explain else {})
    start = time.perf_counter()
    response = server.client.post("/v1/score", json=body)
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, response.text
    return elapsed, None  # the engine's CPU time is another process's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2", help="model whose shapes to use (dummy weights)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--texts", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per text")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-http", action="store_true", help="the engine only (no second model copy)")
    args = parser.parse_args()

    settings = Settings(model=args.model, load_format="dummy", device="cpu", dtype=args.dtype,
                        max_batch_size=max(args.texts, 4), max_queue=64, log_format="text", log_level="WARNING",
                        metrics=False, max_explain_positions=max(1024, args.texts * args.tokens),
                        max_response_entries=1 << 24,
                        prefix_caching=False)  # (every run sends the same texts: reuse would skip the work timed)
    core, info = build_core(settings)
    gen = torch.Generator().manual_seed(0)
    texts = torch.randint(0, info.vocab_size, (args.texts, args.tokens), generator=gen).tolist()
    server = None if args.no_http else Server(settings)
    runs = {}
    for name, explain in SETTINGS.items():
        runs[("engine", name)] = lambda explain=explain: engine_run(core, texts, explain)
        if server is not None:
            runs[("http", name)] = lambda explain=explain: http_run(server, texts, explain)
    times: dict[tuple, list[float]] = {key: [] for key in runs}
    cpu: dict[tuple, list[float]] = {key: [] for key in runs}
    for run in runs.values():  # warm-up
        run()
    for _ in range(args.repeats):
        for key, run in runs.items():
            wall, cpu_s = run()
            times[key].append(wall)
            if cpu_s is not None:
                cpu[key].append(cpu_s)
    best = {key: min(t) for key, t in times.items()}
    median = {key: statistics.median(t) for key, t in times.items()}
    if server is not None:
        server.stop()

    print(f"# {info.source} shapes (dummy weights), {args.dtype}, {torch.get_num_threads()} threads; {args.texts} "
          f"text(s) x {args.tokens} tokens, every position explained; {args.repeats} runs each")
    print(f"{'path':<7} {'run':<42} {'best s':>7} {'median s':>9} {'best vs no explain':>19} {'median vs':>10} "
          f"{'CPU s':>6} {'CPU vs':>7}")
    for path, name in runs:
        key, plain = (path, name), (path, "no explain")
        line = (f"{path:<7} {name:<42} {best[key]:7.3f} {median[key]:9.3f} {best[key] / best[plain]:18.2f}x "
                f"{median[key] / median[plain]:9.2f}x")
        if cpu[key]:  # the median CPU time: other processes on the machine barely move it
            used, plain_used = statistics.median(cpu[key]), statistics.median(cpu[plain])
            line += f" {used:6.3f} {used / plain_used:6.2f}x"
        print(line)


if __name__ == "__main__":
    main()
