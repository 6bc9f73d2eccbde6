"""The serving stack's own cost per token, measured with a model whose compute is nearly nothing
(2 layers, 64 dims, GPT-2's vocabulary): on a GPU this cost, not the forward, bounds tokens/s.

    python bench/overhead.py [--sequences 64 256] [--clients 64] [--new 128] [--skip-http] [--gpt2] [--device cuda]

Everything is measured in one run, side by side:

1. Engine only: the engine core stepped in this process (no transport), --sequences greedy
   sequences of 16 prompt tokens and --new new tokens each. Reported: decode tok/s, and per
   sequence per decode step the time in the model (forward + lm_head), in the sampler (the argmax
   over the vocabulary) and everything else ("python": scheduling, input preparation,
   bookkeeping, building outputs).
2. Through HTTP: --clients streaming clients x --new tokens against `gpt2-serve serve` on the
   tiny model. Reported: CPU time (user + system, all threads, from /proc) of the API process and
   of the engine process per streamed token, next to a bare uvicorn + Starlette app that streams
   the same SSE chunks with no model and no engine (the floor), driven by the same client.
3. With --gpt2: bench/engine.py --concurrency 32 and bench/serving.py (GPT-2 small shapes) run as
   subprocesses, so docs/performance.md's figures are rerun in the same run.
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from app.engine.process import prepare_engine_environment  # noqa: E402

prepare_engine_environment()  # as the engine process does, before torch is imported

TINY = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 64, "n_layer": 2, "n_head": 4,
        "layer_norm_epsilon": 1e-5}
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# --- 1. the engine alone -------------------------------------------------------------------------
class Clock:
    """Accumulates the time spent in some methods of an object."""

    def __init__(self, obj, *names: str):
        self.seconds = 0.0
        for name in names:
            setattr(obj, name, self._wrap(getattr(obj, name)))

    def _wrap(self, fn):
        import torch

        sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None  # a GPU's kernels count too

        def timed(*args, **kwargs):
            sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                self.seconds += time.perf_counter() - start

        return timed


def engine_only(model_dir: str, sequences: int, new: int, device: str) -> dict:
    from app.config import Settings
    from app.engine.process import build_core
    from app.engine.protocol import EngineRequest, SamplingParams

    core, _ = build_core(Settings(model=model_dir, load_format="dummy", device=device, max_batch_size=sequences,
                                  max_num_batched_tokens=max(2048, sequences), max_queue=sequences))
    static = core.runner.static  # fixed-shape decode steps (CUDA graphs): their replay calls no forward
    model = Clock(static, "run") if static is not None else Clock(core.runner.model, "forward", "logits")
    sampler = Clock(core.runner.sampler, "sample")
    params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True)
    for i in range(sequences):
        core.add(EngineRequest(f"r{i}", [(7 * i + j) % 50000 for j in range(16)], params, time.monotonic()))
    steps = seconds = tokens = model_s = sample_s = 0.0
    while core.has_unfinished():
        model.seconds = sampler.seconds = 0.0
        start = time.perf_counter()
        _, stats = core.step()
        elapsed = time.perf_counter() - start
        if stats is not None and stats.phase == "decode" and stats.batch_size == sequences:
            steps += 1
            seconds += elapsed
            tokens += stats.num_decode_tokens
            model_s += model.seconds
            sample_s += sampler.seconds
    per = 1e6 / (steps * sequences)  # microseconds per sequence per step
    return {"sequences": sequences, "decode_tok_s": tokens / seconds, "step_ms": seconds / steps * 1e3,
            "model_us": model_s * per, "sampler_us": sample_s * per,
            "python_us": (seconds - model_s - sample_s) * per}


# --- 2. through HTTP -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, path: str) -> None:
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICK, int(fields[12]) / CLOCK_TICK


def engine_pid(server_pid: int) -> int:
    """The engine core: of the server's children that multiprocessing spawned (not its resource
    tracker; the API process's tokenizer workers are spawned too), the one that has worked most."""
    spawned = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == server_pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            spawned.append(int(entry.name))
    if not spawned:
        raise RuntimeError("no engine process found")
    return max(spawned, key=lambda pid: sum(cpu_seconds(pid)))


async def stream_all(url: str, clients: int, new: int, rounds: int) -> int:
    """`clients` concurrent streams of `new` tokens, `rounds` times; returns the chunks received."""
    import httpx

    body = {"prompt": list(range(100, 116)), "max_tokens": new, "temperature": 0, "ignore_eos": True,
            "stream": True}

    async def one(client: httpx.AsyncClient) -> int:
        chunks = 0
        async with client.stream("POST", "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                chunks += line.startswith("data: {")
        return chunks

    limits = httpx.Limits(max_connections=clients + 4)
    total = 0
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        for _ in range(rounds):
            total += sum(await asyncio.gather(*(one(client) for _ in range(clients))))
    return total


def measure_server(command: list[str], env: dict, path: str, clients: int, new: int, rounds: int,
                   with_engine: bool) -> dict:
    port = free_port()
    env = {**os.environ, **env, "GPT2_PORT": str(port), "GPT2_HOST": "127.0.0.1", "GPT2_LOG_LEVEL": "WARNING",
           "BARE_PORT": str(port)}
    proc = subprocess.Popen(command, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, path)
        asyncio.run(stream_all(url, clients, new, 1))  # warm up
        pids = {"api": proc.pid, **({"engine": engine_pid(proc.pid)} if with_engine else {})}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        start = time.perf_counter()
        chunks = asyncio.run(stream_all(url, clients, new, rounds))
        wall = time.perf_counter() - start
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    finally:
        proc.terminate()
        proc.wait(60)
    out = {"chunks": chunks, "tok_s": chunks / wall}
    for name in pids:
        user, system = (a - b for a, b in zip(after[name], before[name], strict=True))
        out[f"{name}_us"] = (user + system) / chunks * 1e6
        out[f"{name}_system_us"] = system / chunks * 1e6
    return out


def serve_bare(port: int, new: int, tick: float) -> None:
    """A bare uvicorn + Starlette app that streams SSE chunks shaped like gpt2-serve's, no model.
    With `tick` > 0 every stream sends its next chunk when a shared clock ticks, every `tick`
    seconds, as gpt2-serve's streams do when an engine step ends; with 0, as fast as it can (the
    socket buffers fill, and the transport then batches the writes: a lower floor)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    chunk = ("data: " + json.dumps({"id": "cmpl-0123456789abcdef0123456789abcdef", "object": "text_completion",
                                    "created": 1700000000, "model": "tiny", "choices": [
                                        {"index": 0, "text": " token", "logprobs": None, "finish_reason": None}]})
             + "\n\n").encode()

    clock = {"step": None}

    async def ticking() -> None:
        while True:
            await asyncio.sleep(tick)
            step, clock["step"] = clock["step"], asyncio.get_running_loop().create_future()
            step.set_result(None)

    async def next_step() -> None:
        if not tick:
            return await asyncio.sleep(0)
        if clock["step"] is None:
            clock["step"] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().create_task(ticking())
        await clock["step"]

    async def complete(request):
        body = json.loads(await request.body())

        async def chunks():
            for _ in range(body.get("max_tokens", new)):
                await next_step()  # as a route waits for the engine between tokens
                yield chunk
            yield b"data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def ready(request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/v1/completions", complete, methods=["POST"]), Route("/readyz", ready)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def through_http(model_dir: str, clients: int, new: int, rounds: int, device: str) -> tuple[dict, dict, dict]:
    ours = measure_server([sys.executable, "-m", "app.cli", "serve"],
                          {"GPT2_MODEL": model_dir, "GPT2_LOAD_FORMAT": "dummy", "GPT2_DEVICE": device,
                           "GPT2_MAX_BATCH_SIZE": str(clients), "GPT2_MAX_QUEUE": str(clients)},
                          "/readyz", clients, new, rounds, with_engine=True)
    bare = measure_server([sys.executable, __file__, "--serve-bare"], {"BARE_TICK": "0"}, "/readyz", clients, new,
                          rounds, with_engine=False)
    tick = clients / ours["tok_s"]  # the engine's step period in that run
    paced = measure_server([sys.executable, __file__, "--serve-bare"], {"BARE_TICK": str(tick)}, "/readyz", clients,
                           new, rounds, with_engine=False)
    return ours, bare, {**paced, "tick_ms": tick * 1e3}


# --- 3. GPT-2 small ------------------------------------------------------------------------------
def gpt2_small(device: str) -> None:
    extra_gpu = [] if device == "cpu" else ["--dtype", "bfloat16"]
    for script, extra in (("engine.py", ["--concurrency", "32", *extra_gpu]), ("serving.py", [])):
        extra = [*extra, "--device", device]
        print(f"\n$ python bench/{script} {' '.join(extra)}", flush=True)
        subprocess.run([sys.executable, str(ROOT / "bench" / script), *extra], check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --clients streams measured")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--gpt2", action="store_true", help="also rerun the GPT-2 small benchmarks")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N, for every part")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        return serve_bare(int(os.environ["BARE_PORT"]), args.new, float(os.environ.get("BARE_TICK", "0")))

    import torch

    with tempfile.TemporaryDirectory() as model_dir:
        (Path(model_dir) / "config.json").write_text(json.dumps(TINY))
        print(f"# tiny GPT-2 (2 layers, 64 dims, vocabulary 50257), dummy weights, fp32, device {args.device}, "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} cores")
        print("\nengine only (16-token prompts, greedy), per sequence per decode step:")
        print(f"{'sequences':>9} {'decode tok/s':>12} {'step ms':>8} {'model us':>9} {'sampler us':>10} "
              f"{'python us':>9}")
        for n in args.sequences:
            r = engine_only(model_dir, n, args.new, args.device)
            print(f"{n:9d} {r['decode_tok_s']:12.0f} {r['step_ms']:8.2f} {r['model_us']:9.2f} "
                  f"{r['sampler_us']:10.2f} {r['python_us']:9.2f}", flush=True)
        if not args.skip_http:
            ours, bare, paced = through_http(model_dir, args.clients, args.new, args.rounds, args.device)
            print(f"\nthrough HTTP: {args.clients} streaming clients x {args.new} tokens, {args.rounds} rounds "
                  "(CPU time per streamed token, all threads of the process)")
            print(f"  gpt2-serve          API process {ours['api_us']:6.1f} us ({ours['api_system_us']:.1f} in the "
                  f"kernel)   engine process {ours['engine_us']:6.1f} us   {ours['tok_s']:7.0f} tok/s")
            print(f"  bare SSE, unpaced   API process {bare['api_us']:6.1f} us ({bare['api_system_us']:.1f} in the "
                  f"kernel)   {bare['tok_s']:7.0f} tok/s")
            print(f"  bare SSE, paced     API process {paced['api_us']:6.1f} us ({paced['api_system_us']:.1f} in the "
                  f"kernel)   {paced['tok_s']:7.0f} tok/s (a chunk per stream every {paced['tick_ms']:.1f} ms, "
                  "gpt2-serve's step period)")
            if bare["api_us"] and paced["api_us"]:  # (CPU time counts in 10 ms ticks: a short run may read 0)
                print(f"  API process / floor: {ours['api_us'] / bare['api_us']:.2f}x unpaced, "
                      f"{ours['api_us'] / paced['api_us']:.2f}x paced")
    if args.gpt2:
        gpt2_small(args.device)


if __name__ == "__main__":
    main()
