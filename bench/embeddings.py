"""Embedding throughput against a bare batched forward pass over the same tokens, in one run.

    python bench/embeddings.py [--model gpt2] [--texts 32] [--tokens 256] [--repeats 3] [--http]

Everything runs in this process on the same model (dummy weights, GPT-2 small shapes by default):

- bare: our own GPT2 forward (app/model/gpt2.py) over the texts packed into batches (every
  position's final hidden state), then each text's mean: the work an embedding cannot avoid,
  without scheduling or anything else. Two ways: all texts in one pass, and as many texts per pass
  as an engine step holds (GPT2_MAX_NUM_BATCHED_TOKENS); the faster is the reference.
- engine: the same texts as embedding requests (mean pooling of the final hidden state,
  L2-normalised: /v1/embeddings' default) through the engine's step loop on this thread; and the
  same pooling layer 6 of the residual stream (the forward keeps that layer's rows).
- http (with --http): POST /v1/embeddings of the same token ids to a uvicorn server in this process,
  encoding_format float and base64 (adds JSON and the transport).

Reported: tokens/s (input tokens through the model per second of wall time) and the ratio to bare.
The runs alternate (bare, engine, ... per repeat) and the best of --repeats counts.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.engine.process import prepare_engine_environment  # noqa: E402

prepare_engine_environment()  # as the engine process does, before torch is imported

import torch  # noqa: E402

from app.engine.protocol import EmbedParams, EngineRequest, SamplingParams  # noqa: E402
from app.model.gpt2 import AttentionPlan, KVCache, Prefill  # noqa: E402
from bench.score import Server, add_workload_arguments, best_of, build_workload  # noqa: E402


def bare_embed(model, cache: KVCache, texts: list[list[int]], per_pass: int) -> float:
    """`per_pass` texts packed into each forward, every position's final hidden state kept, then
    each text's mean. Returns seconds."""
    n = len(texts[0])
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(texts), per_pass):
            group = texts[first : first + per_pass]
            ids = torch.tensor([t for text in group for t in text])
            positions = torch.arange(n).repeat(len(group))
            slots = torch.arange(len(group)).repeat_interleave(n)
            plan = AttentionPlan(num_decode=0, prefills=tuple(Prefill(i * n, n, i, 0) for i in range(len(group))))
            hidden = model(ids, positions, slots, plan, cache)  # [T, C]
            hidden.view(len(group), n, -1).mean(1).tolist()
    return time.perf_counter() - start


def engine_embed(core, texts: list[list[int]], layer: int) -> float:
    params = SamplingParams(max_tokens=0, temperature=0.0, embed=EmbedParams(layers=[layer]))
    start = time.perf_counter()
    for i, text in enumerate(texts):
        core.add(EngineRequest(f"m{i}-{time.monotonic_ns()}", text, params, time.monotonic()))
    while core.has_unfinished():
        for output in core.step()[0]:
            assert output.finished and len(output.readout.embeddings[0]) == core.runner.model.config.n_embd
    return time.perf_counter() - start


def http_embed(server: Server, texts: list[list[int]], encoding: str) -> float:
    start = time.perf_counter()
    response = server.client.post("/v1/embeddings", json={"input": texts, "encoding_format": encoding})
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, response.text
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--http", action="store_true", help="also through HTTP (loads a second model copy)")
    args = parser.parse_args()

    settings, core, info, cache, texts = build_workload(args)
    model = core.runner.model
    config = model.config
    num_tokens = args.texts * args.tokens
    server = Server(settings) if args.http else None

    per_step = max(1, args.max_num_batched_tokens // args.tokens)
    middle = config.n_layer // 2
    runs = {"bare (one pass)": lambda: bare_embed(model, cache, texts, args.texts),
            f"bare ({per_step} texts/pass)": lambda: bare_embed(model, cache, texts, per_step),
            "engine (final layer, mean)": lambda: engine_embed(core, texts, config.n_layer),
            f"engine (layer {middle}, mean)": lambda: engine_embed(core, texts, middle)}
    if server is not None:
        runs["http (float)"] = lambda: http_embed(server, texts, "float")
        runs["http (base64)"] = lambda: http_embed(server, texts, "base64")
    best = best_of(runs, args.repeats, info, args)
    if server is not None:
        server.stop()
    bare = min(v for k, v in best.items() if k.startswith("bare"))
    print(f"{'run':<28} {'seconds':>8} {'tokens/s':>9} {'vs bare':>8}")
    for name, seconds in best.items():
        print(f"{name:<28} {seconds:8.3f} {num_tokens / seconds:9.1f} {bare / seconds:8.1%}")


if __name__ == "__main__":
    main()
