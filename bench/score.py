"""Scoring throughput against a bare batched forward pass of the same shapes, in one run.

    python bench/score.py [--model gpt2] [--texts 32] [--tokens 256] [--repeats 3] [--http] [--top-logprobs 5]

Everything runs in this process on the same model (dummy weights, GPT-2 small shapes by default):

- bare: our own GPT2 forward (app/model/gpt2.py) over the texts packed into one batch (every
  position's final hidden state kept), then the lm_head and a full-vocabulary log_softmax for
  every position, plus gathering each next token's logprob: the work scoring cannot avoid,
  without scheduling, ranks or statistics. Three ways: all texts in one pass, the lm_head on 256
  rows at a time; as many texts per pass as an engine step holds (GPT2_MAX_NUM_BATCHED_TOKENS),
  likewise; and the same with the lm_head and log_softmax taken 32 rows at a time (a [32, V]
  block stays in cache and below glibc's mmap threshold, which a [256, V] one does not; the
  engine does this). The fastest of the three is the reference.
- engine: the same texts as prefill-only requests (max_tokens=0, prompt_logprobs=0) through the
  engine's step loop on this thread, with prompt_stats off (logprobs + ranks) and on
  (detect=true: entropy and variance too).
- http (with --http): POST /v1/score of the same token ids to a uvicorn server in this process,
  return_tokens false and true (adds the per-token JSON), and with --top-logprobs that many
  alternatives per token too.

Reported: tokens/s (input tokens through the model per second of wall time) and the ratio to
bare. The runs alternate (bare, engine, ... per repeat) and the best of --repeats counts, so that
a noisy shared machine hurts both sides alike.
"""

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.engine.process import prepare_engine_environment  # noqa: E402

prepare_engine_environment()  # as the engine process does, before torch is imported

import torch  # noqa: E402

from app.config import Settings  # noqa: E402
from app.engine.process import build_core  # noqa: E402
from app.engine.protocol import EngineRequest, SamplingParams  # noqa: E402
from app.engine.runner import SCORE_ROWS  # noqa: E402
from app.model.gpt2 import AttentionPlan, KVCache, Prefill  # noqa: E402


def bare_forward(model, cache: KVCache, texts: list[list[int]], per_pass: int, rows: int = 256) -> float:
    """`per_pass` texts packed into each forward (every position's hidden state kept), then the
    lm_head and the log_softmax for every position in blocks of `rows` rows. Returns seconds."""
    n = len(texts[0])
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(texts), per_pass):
            group = texts[first : first + per_pass]
            ids = torch.tensor([t for text in group for t in text])
            positions = torch.arange(n).repeat(len(group))
            slots = torch.arange(len(group)).repeat_interleave(n)
            plan = AttentionPlan(num_decode=0, prefills=tuple(Prefill(i * n, n, i, 0) for i in range(len(group))))
            targets = torch.tensor([text[1:] + [0] for text in group]).view(-1)
            hidden = model(ids, positions, slots, plan, cache)  # [T, C], every position
            chosen = []
            for s in range(0, hidden.shape[0], rows):
                logprobs = model.logits(hidden[s : s + rows]).log_softmax(-1)  # [rows, V]
                chosen.append(logprobs.gather(1, targets[s : s + rows].unsqueeze(1)))
            torch.cat(chosen).tolist()
    return time.perf_counter() - start


def engine_scoring(core, texts: list[list[int]], stats: bool) -> float:
    """The texts as prefill-only requests through the engine core's step loop, in this process (as
    the engine process runs it, without the transport)."""
    params = SamplingParams(max_tokens=0, temperature=0.0, prompt_logprobs=0, prompt_stats=stats)
    start = time.perf_counter()
    for i, text in enumerate(texts):
        core.add(EngineRequest(f"s{i}-{time.monotonic_ns()}", text, params, time.monotonic()))
    while core.has_unfinished():
        for output in core.step()[0]:
            assert output.finished and len(output.prompt_scores.token_logprobs) == len(texts[0]) - 1
            assert not stats or len(output.prompt_scores.entropy) == len(texts[0]) - 1
    return time.perf_counter() - start


class Server:
    """uvicorn in a thread of this process, on an ephemeral port."""

    def __init__(self, settings: Settings):
        import httpx
        import uvicorn

        from app.main import create_app

        self.app = create_app(settings)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_config=None, access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        self.client = httpx.Client(base_url=self.url, timeout=600)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the server did not become ready")

    def score(self, texts: list[list[int]], return_tokens: bool, top_logprobs: int = 0) -> float:
        start = time.perf_counter()
        response = self.client.post("/v1/score", json={"input": texts, "return_tokens": return_tokens,
                                                       "top_logprobs": top_logprobs})
        elapsed = time.perf_counter() - start
        assert response.status_code == 200, response.text
        return elapsed

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a texts-through-the-model benchmark (this one and bench/embeddings.py)."""
    parser.add_argument("--model", default="gpt2", help="model whose shapes to use (dummy weights)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per text")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048, help="GPT2_MAX_NUM_BATCHED_TOKENS")
    parser.add_argument("--repeats", type=int, default=3)


def build_workload(args: argparse.Namespace):
    """(settings, engine core, its info, a KV cache for the bare passes, the random texts) of those arguments."""
    settings = Settings(model=args.model, load_format="dummy", device="cpu", dtype=args.dtype,
                        max_batch_size=args.texts, max_num_batched_tokens=args.max_num_batched_tokens,
                        max_queue=max(args.texts, 256), log_format="text", log_level="WARNING", metrics=False,
                        prefix_caching=False)  # (every run sends the same texts: reuse would skip the work timed)
    core, info = build_core(settings)
    model = core.runner.model
    cache = KVCache(model.config, args.texts, args.tokens, torch.device("cpu"), next(model.parameters()).dtype)
    gen = torch.Generator().manual_seed(0)
    texts = torch.randint(0, model.config.vocab_size, (args.texts, args.tokens), generator=gen).tolist()
    return settings, core, info, cache, texts


def best_of(runs: dict, repeats: int, info, args: argparse.Namespace) -> dict[str, float]:
    """Each run's best seconds over `repeats` rounds (after one warm-up round), the runs alternated;
    prints the header line of the report."""
    best = {name: float("inf") for name in runs}
    for run in runs.values():  # warm-up
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], run())
    print(f"# {info.source} shapes (dummy weights), {args.dtype}, {torch.get_num_threads()} threads; {args.texts} "
          f"texts x {args.tokens} tokens; GPT2_MAX_NUM_BATCHED_TOKENS={args.max_num_batched_tokens}; best of "
          f"{repeats}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--http", action="store_true", help="also score through HTTP (loads a second model copy)")
    parser.add_argument("--top-logprobs", type=int, default=0, help="with --http: also a run with this many "
                        "alternatives per token")
    args = parser.parse_args()

    settings, core, info, cache, texts = build_workload(args)
    model = core.runner.model
    num_tokens = args.texts * args.tokens
    server = Server(settings) if args.http else None

    per_step = max(1, args.max_num_batched_tokens // args.tokens)
    runs = {"bare (one pass)": lambda: bare_forward(model, cache, texts, args.texts),
            f"bare ({per_step} texts/pass)": lambda: bare_forward(model, cache, texts, per_step),
            f"bare ({per_step}/pass, 32 rows)": lambda: bare_forward(model, cache, texts, per_step, SCORE_ROWS),
            "engine (logprobs+ranks)": lambda: engine_scoring(core, texts, stats=False),
            "engine (detect=true)": lambda: engine_scoring(core, texts, stats=True)}
    if server is not None:
        runs["http (numbers only)"] = lambda: server.score(texts, return_tokens=False)
        runs["http (return_tokens)"] = lambda: server.score(texts, return_tokens=True)
        if args.top_logprobs:
            runs[f"http (top_logprobs={args.top_logprobs})"] = lambda: server.score(texts, True, args.top_logprobs)
    best = best_of(runs, args.repeats, info, args)
    if server is not None:
        server.stop()
    bare = min(v for k, v in best.items() if k.startswith("bare"))  # the faster bare pass is the reference
    print(f"{'run':<26} {'seconds':>8} {'tokens/s':>9} {'vs bare':>8}")
    for name, seconds in best.items():
        print(f"{name:<26} {seconds:8.3f} {num_tokens / seconds:9.1f} {bare / seconds:8.1%}")


if __name__ == "__main__":
    main()
