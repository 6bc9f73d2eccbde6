"""What the HTTP layer costs: throughput and added latency, HTTP vs the engine called directly.

    python bench/serving.py [--model gpt2] [--concurrency 32] [--prompt 128] [--new 128] [--repeats 3]

One run, one machine: a server process (`gpt2-serve serve`, dummy weights) and, in this process,
the same engine built directly. Runs alternate (HTTP, direct, HTTP, direct, ...) so drift on a
shared machine hits both alike.

- throughput: --concurrency streaming clients, each --prompt tokens in and --new tokens out
  (greedy, EOS ignored); output tokens/s through HTTP vs through the engine client directly (an
  engine process of its own, driven from this process without HTTP);
- added latency: one request at a time on an idle server (8-token prompt, 4 new tokens, streamed);
  the median of HTTP wall time minus the median of the direct engine's wall time, and the
  median of the differences of back-to-back pairs (more robust to drift).
"""

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from app.engine.process import prepare_engine_environment  # noqa: E402

prepare_engine_environment()  # as the engine process does, before torch is imported

import httpx  # noqa: E402
import torch  # noqa: E402

from app.config import Settings  # noqa: E402
from app.engine.client import EngineClient  # noqa: E402
from app.engine.protocol import EngineRequest, SamplingParams  # noqa: E402
from app.service import start_engine  # noqa: E402


def start_server(settings: dict[str, str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, **settings, "GPT2_PORT": str(port), "GPT2_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


async def http_stream(client: httpx.AsyncClient, prompt: list[int], new: int) -> tuple[int, float]:
    body = {"prompt": prompt, "max_tokens": new, "temperature": 0, "ignore_eos": True, "stream": True}
    start = time.perf_counter()
    chunks = 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            chunks += line.startswith("data: {")
    return chunks, time.perf_counter() - start


async def direct_stream(engine: EngineClient, rid: str, prompt: list[int], new: int) -> tuple[int, float]:
    params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    (stream,) = engine.submit([EngineRequest(rid, prompt, params)])
    tokens = sum([len(o.token_ids) async for o in stream])
    return tokens, time.perf_counter() - start


async def throughput(run_one, prompts: list[list[int]], new: int) -> float:
    start = time.perf_counter()
    counts = await asyncio.gather(*(run_one(i, p) for i, p in enumerate(prompts)))
    wall = time.perf_counter() - start
    return sum(c for c, _ in counts) / wall


async def main_async(args) -> None:
    settings = {"GPT2_MODEL": args.model, "GPT2_LOAD_FORMAT": "dummy", "GPT2_DEVICE": args.device,
                "GPT2_MAX_BATCH_SIZE": str(args.concurrency), "GPT2_METRICS": "true"}
    proc, url = start_server(settings)
    try:
        direct = await start_engine(Settings(model=args.model, load_format="dummy", device=args.device,
                                             max_batch_size=args.concurrency))
        gen = torch.Generator().manual_seed(0)
        prompts = torch.randint(0, 50257, (args.concurrency, args.prompt), generator=gen).tolist()
        small = torch.randint(0, 50257, (8,), generator=gen).tolist()
        limits = httpx.Limits(max_connections=args.concurrency + 4)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            await http_stream(client, small, 4)  # warm both paths
            await direct_stream(direct, "warm", small, 4)
            http_tps, direct_tps, http_lat, direct_lat = [], [], [], []
            for r in range(args.repeats):
                http_tps.append(await throughput(lambda i, p: http_stream(client, p, args.new), prompts, args.new))
                direct_tps.append(await throughput(lambda i, p, r=r: direct_stream(direct, f"t{r}-{i}", p, args.new),
                                                   prompts, args.new))
                for k in range(args.latency_samples):
                    http_lat.append((await http_stream(client, small, 4))[1])
                    direct_lat.append((await direct_stream(direct, f"l{r}-{k}", small, 4))[1])
        await direct.shutdown()
    finally:
        proc.terminate()
        proc.wait(60)
    h, d = statistics.median(http_tps), statistics.median(direct_tps)
    added = (statistics.median(http_lat) - statistics.median(direct_lat)) * 1e3
    paired = statistics.median(h - d for h, d in zip(http_lat, direct_lat, strict=True)) * 1e3
    print(f"# {args.model} shapes, dummy weights, device {args.device} (its default dtype), "
          f"{torch.get_num_threads()} threads; {args.concurrency} streaming clients x ({args.prompt} prompt + "
          f"{args.new} new tokens), {args.repeats} alternating repeats")
    print(f"throughput  HTTP {h:8.1f} tok/s   direct engine {d:8.1f} tok/s   ratio {h / d:6.1%}")
    print(f"            per repeat HTTP {[round(x, 1) for x in http_tps]} direct {[round(x, 1) for x in direct_tps]}")
    print(f"latency     HTTP median {statistics.median(http_lat) * 1e3:7.2f} ms   direct median "
          f"{statistics.median(direct_lat) * 1e3:7.2f} ms   added {added:6.2f} ms (median of back-to-back pair "
          f"differences {paired:6.2f} ms; n={len(http_lat)} each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=20)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
