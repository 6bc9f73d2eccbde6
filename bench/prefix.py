"""Prefix reuse, A/B in one run: two servers of the same settings, GPT2_PREFIX_CACHING on and off,
fed the same workloads in alternation (these machines are shared and noisy: ratios, not totals).

    python bench/prefix.py [--model gpt2] [--repeats 2] [--workloads mc,fork,instructions,distinct]

Each repeat uses fresh random prompts, so the "on" server never profits from an earlier repeat.

- mc: lm-evaluation-harness multiple choice (loglikelihood requests): --items items x 4 choices, a
  250-token context and 8-token continuations, echo + logprobs=1 + max_tokens=0, --clients clients.
  Requests/s, the share of the time the engine was stepping, and the largest difference between
  the two servers' logprobs.
- fork: n=8 completions of a 400-token prompt (16 new tokens, streamed): time until the first
  choice's first token and until every choice has one; prompt tokens computed (from /metrics).
- instructions: 32 clients x 4 requests, each a 500-token shared instruction + a 20-token question
  (16 new tokens, streamed): time to first token p50 / p90.
- distinct: nothing shared. 32 clients x (128-token prompt + 64 new tokens), and 8 clients on the
  same 32 slots: output tok/s; and /v1/score of 32 distinct 256-token texts: requests/s.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.serving import start_server  # noqa: E402

VOCAB = 50257


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


async def first_tokens(client: httpx.AsyncClient, body: dict) -> tuple[list[float], float]:
    """Stream a completion; (seconds until each choice's first token, seconds until the end)."""
    start = time.perf_counter()
    firsts: dict[int, float] = {}
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    firsts.setdefault(choice["index"], time.perf_counter() - start)
    return sorted(firsts.values()), time.perf_counter() - start


async def counter(client: httpx.AsyncClient, prefix: str) -> float:
    """The sum of the samples on /metrics whose line starts with `prefix`."""
    text = (await client.get("/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


async def prefill_tokens(client: httpx.AsyncClient) -> float:
    return await counter(client, "gpt2_prefill_tokens_total")


async def engine_seconds(client: httpx.AsyncClient) -> float:
    """Seconds the engine spent in steps so far."""
    return await counter(client, "gpt2_step_duration_seconds_sum")


async def pool(jobs: list, clients: int) -> list:
    """Run coroutine factories with at most `clients` at once, in order; results in order."""
    results, queue = [None] * len(jobs), list(enumerate(jobs))[::-1]

    async def worker():
        while queue:
            i, job = queue.pop()
            results[i] = await job()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return results


# --- workloads: each returns {figure: value} for one server --------------------------------------
async def mc(client, rng, args) -> dict:
    requests = []
    for _ in range(args.items):
        context = ids(rng, 250)
        requests += [context + ids(rng, 8) for _ in range(4)]

    async def one(prompt):
        body = {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1}
        response = await client.post("/v1/completions", json=body)
        response.raise_for_status()
        return response.json()["choices"][0]["logprobs"]["token_logprobs"]

    start, busy = time.perf_counter(), await engine_seconds(client)
    logprobs = await pool([lambda p=p: one(p) for p in requests], args.clients)
    wall = time.perf_counter() - start
    return {"req/s": len(requests) / wall, "engine busy %": 100 * (await engine_seconds(client) - busy) / wall,
            "_logprobs": logprobs}


async def fork(client, rng, args) -> dict:
    before = await prefill_tokens(client)
    body = {"prompt": ids(rng, 400), "n": 8, "max_tokens": 16, "temperature": 1.0, "seed": 1, "ignore_eos": True}
    firsts, _ = await first_tokens(client, body)
    return {"first ms": firsts[0] * 1e3, "all first ms": firsts[-1] * 1e3,
            "prefilled": await prefill_tokens(client) - before}


async def instructions(client, rng, args) -> dict:
    shared = ids(rng, 500)
    bodies = [{"prompt": shared + ids(rng, 20), "max_tokens": 16, "temperature": 0, "ignore_eos": True}
              for _ in range(32 * 4)]
    results = await pool([lambda b=b: first_tokens(client, b) for b in bodies], 32)
    ttfts = sorted(firsts[0] for firsts, _ in results)
    return {"ttft p50 ms": statistics.median(ttfts) * 1e3, "ttft p90 ms": ttfts[int(0.9 * len(ttfts))] * 1e3}


async def distinct(client, rng, args) -> dict:
    figures = {}
    for clients in (32, 8):
        bodies = [{"prompt": ids(rng, 128), "max_tokens": 64, "temperature": 0, "ignore_eos": True}
                  for _ in range(clients)]
        start = time.perf_counter()
        await asyncio.gather(*(first_tokens(client, b) for b in bodies))
        figures[f"{clients} clients tok/s"] = clients * 64 / (time.perf_counter() - start)
    texts = [ids(rng, 256) for _ in range(32)]
    start = time.perf_counter()
    async def score(text):
        (await client.post("/v1/score", json={"input": [text]})).raise_for_status()

    await pool([lambda t=t: score(t) for t in texts], 8)
    figures["score req/s"] = len(texts) / (time.perf_counter() - start)
    return figures


WORKLOADS = {"mc": mc, "fork": fork, "instructions": instructions, "distinct": distinct}


async def main_async(args) -> None:
    common = {"GPT2_MODEL": args.model, "GPT2_LOAD_FORMAT": "dummy", "GPT2_DEVICE": args.device,
              "GPT2_MAX_BATCH_SIZE": "32", "GPT2_MAX_QUEUE": "1024"}
    servers = {}
    try:
        for name, flag in (("on", "true"), ("off", "false")):
            servers[name] = start_server({**common, "GPT2_PREFIX_CACHING": flag})
        clients = {name: httpx.AsyncClient(base_url=url, timeout=1200, limits=httpx.Limits(max_connections=64))
                   for name, (_, url) in servers.items()}
        for client in clients.values():  # warm both
            await client.post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2})
        print(f"# {args.model}, dummy weights, {args.device}; GPT2_PREFIX_CACHING on vs off, alternating, "
              f"{args.repeats} repeats, fresh prompts each repeat")
        for workload in args.workloads.split(","):
            runs = {"on": [], "off": []}
            for r in range(args.repeats):
                for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    rng = random.Random(f"{workload}-{r}")  # the same prompts for both servers
                    runs[name].append(await WORKLOADS[workload](clients[name], rng, args))
            report(workload, runs)
        for client in clients.values():
            await client.aclose()
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(60)


def report(workload: str, runs: dict[str, list[dict]]) -> None:
    if "_logprobs" in runs["on"][0]:
        worst = max(abs(a - b) for on, off in zip(runs["on"], runs["off"], strict=True)
                    for x, y in zip(on.pop("_logprobs"), off.pop("_logprobs"), strict=True)
                    for a, b in zip(x[1:], y[1:], strict=True))
        print(f"{workload}: largest |logprob on - logprob off| = {worst:.2e}")
    for figure in runs["on"][0]:
        on = statistics.median(run[figure] for run in runs["on"])
        off = statistics.median(run[figure] for run in runs["off"])
        each = {name: [round(x[figure], 1) for x in runs[name]] for name in runs}
        print(f"{workload:13s} {figure:18s} on {on:10.1f}   off {off:10.1f}   on/off {on / off:6.2f}x   "
              f"(runs on {each['on']}, off {each['off']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--items", type=int, default=64, help="multiple-choice items (4 requests each)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the multiple-choice workload")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
