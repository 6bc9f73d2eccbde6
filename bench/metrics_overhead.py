"""What recording metrics costs: throughput with the metrics listeners on vs off.

    python bench/metrics_overhead.py [--model gpt2] [--concurrency 32] [--prompt 128] [--new 64] [--pairs 3]

One engine process (dummy weights with the model's real shapes, fp32, CPU by default) driven by
an engine client in this process (the API process's role), `--concurrency` sequences submitted at
once, greedy, EOS ignored so every sequence makes exactly `--new` tokens. "on" = the service's own
Metrics object subscribed to the client's step and request listeners (what GPT2_METRICS=true
does); "off" = no listeners (GPT2_METRICS=false). The listeners run in the API process, beside
the engine's own process, so on a machine with a core to spare they cost the engine nothing. Runs
are interleaved in ABBA order (on, off, off, on, ...) after a discarded warm-up run, so drift and
neighbours' load fall on both sides. Printed: the ratio of the median tokens/s (whole runs,
prefill included) and the per-pair ratios; and the ratio of the median decode-step periods (the
time from one step's listeners to the next's, so it includes the listeners), which a burst of
load from a neighbour moves far less than a whole run's wall time.

The machine is shared and noisy, so it also prints the listeners' own cost, timed in a tight loop
on stats shaped like this run's (batch of --concurrency, one inter-token latency per sequence):
that bounds the overhead without the noise of whole runs.
"""

import argparse
import asyncio
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
from app.engine.client import EngineClient  # noqa: E402
from app.engine.protocol import EngineRequest, RequestStats, SamplingParams, StepStats  # noqa: E402
from app.metrics import Metrics  # noqa: E402
from app.service import start_engine  # noqa: E402


async def run(engine: EngineClient, metrics: Metrics | None, prompts: list[list[int]],
              new_tokens: int) -> tuple[float, list[float]]:
    """Generate for every prompt at once; returns (tokens/s, the periods between consecutive decode
    steps as this process receives them, so they include the listeners)."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    periods: list[float] = []
    last = [None]

    def clock(stats):
        now = time.perf_counter()
        if stats.phase == "decode" and last[0] is not None:
            periods.append(now - last[0])
        last[0] = now if stats.phase == "decode" else None

    async def one(stream) -> int:
        return sum([len(o.token_ids) async for o in stream])

    listeners = [(engine.step_listeners, clock)]
    if metrics is not None:
        listeners += [(engine.step_listeners, metrics.on_step), (engine.request_listeners, metrics.on_request)]
    for where, listener in listeners:
        where.append(listener)
    try:
        start = time.perf_counter()
        streams = engine.submit([EngineRequest(f"m{time.monotonic_ns()}-{i}", p, params)
                                 for i, p in enumerate(prompts)])
        tokens = sum(await asyncio.gather(*(one(s) for s in streams)))
        wall = time.perf_counter() - start
    finally:
        for where, listener in listeners:
            where.remove(listener)
    assert tokens == len(prompts) * new_tokens, tokens
    return tokens / wall, periods


def listener_cost(metrics: Metrics, batch: int, repeats: int = 2000) -> tuple[float, float]:
    """Microseconds per decode step (batch sequences, one ITL each) and per finished request."""
    step = StepStats("decode", 0.1, batch, 0, batch, [0.1 + i * 1e-4 for i in range(batch)])
    request = RequestStats("r", 128, 64, 0.01, 0.5, 7.0, "length", 0)
    start = time.perf_counter()
    for _ in range(repeats):
        metrics.on_step(step)
    per_step = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        metrics.on_request(request)
    per_request = (time.perf_counter() - start) / repeats
    return per_step * 1e6, per_request * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2", help="model whose shapes to use (dummy weights)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per request")
    parser.add_argument("--new", type=int, default=64, help="new tokens per request")
    parser.add_argument("--pairs", type=int, default=3, help="on/off pairs (ABBA order)")
    args = parser.parse_args()

    settings = Settings(model=args.model, load_format="dummy", device=args.device, dtype=args.dtype,
                        max_batch_size=args.concurrency, max_num_batched_tokens=2048, max_queue=args.concurrency)
    asyncio.run(compare(settings, args))


async def compare(settings: Settings, args) -> None:
    engine = await start_engine(settings)
    metrics = Metrics()  # the service's own series, in a registry of its own
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, engine.info.vocab_size, (args.concurrency, args.prompt), generator=gen).tolist()
    print(f"# {engine.info.source} shapes, {args.dtype} on {engine.info.device}, {torch.get_num_threads()} threads; "
          f"{args.concurrency} sequences x ({args.prompt} prompt + {args.new} new tokens); {args.pairs} on/off pairs")

    await run(engine, None, prompts, args.new)  # warm-up, discarded
    tok_s: dict[str, list[float]] = {"on": [], "off": []}
    periods: dict[str, list[float]] = {"on": [], "off": []}
    step_medians: dict[str, list[float]] = {"on": [], "off": []}
    order = [m for i in range(args.pairs) for m in (("on", "off") if i % 2 == 0 else ("off", "on"))]
    for mode in order:
        rate, steps = await run(engine, metrics if mode == "on" else None, prompts, args.new)
        tok_s[mode].append(rate)
        periods[mode] += steps
        step_medians[mode].append(statistics.median(steps))
        print(f"{mode:>3}: {rate:8.1f} tok/s, decode step {statistics.median(steps) * 1e3:6.1f} ms (median)",
              flush=True)
    await engine.shutdown()

    pairs = [on / off for on, off in zip(tok_s["on"], tok_s["off"], strict=True)]
    on, off = statistics.median(tok_s["on"]), statistics.median(tok_s["off"])
    step_on, step_off = statistics.median(periods["on"]), statistics.median(periods["off"])
    print(f"tokens/s: median on {on:.1f}, off {off:.1f}, on/off {on / off:.4f}; on/off per pair "
          f"{', '.join(f'{r:.4f}' for r in pairs)} (median {statistics.median(pairs):.4f})")
    step_pairs = [off / on for on, off in zip(step_medians["on"], step_medians["off"], strict=True)]
    print(f"decode step (median of {len(periods['on'])} vs {len(periods['off'])}): on {step_on * 1e3:.2f} ms, "
          f"off {step_off * 1e3:.2f} ms -> decode throughput on/off {step_off / step_on:.4f}; per pair "
          f"{', '.join(f'{r:.4f}' for r in step_pairs)} (median {statistics.median(step_pairs):.4f})")
    per_step, per_request = listener_cost(Metrics(), args.concurrency)
    print(f"listeners alone: {per_step:.1f} us per step of {args.concurrency} sequences, {per_request:.1f} us per "
          f"finished request = {per_step / (step_off * 1e6) * 100:.3f}% of a decode step")

if __name__ == "__main__":
    main()
