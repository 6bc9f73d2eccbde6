"""Engine throughput against transformers' batched generate and the machine's matmul roofline.

    python bench/engine.py [--model gpt2] [--concurrency 1 8 32 64] [--prompt 128] [--new 128]

Everything is measured in this one process, side by side: a large fp32 matmul (the roofline),
then for each concurrency our engine and transformers' `generate` on the same batch (dummy
weights, greedy, EOS ignored, so every sequence makes exactly --new tokens).

Reported per concurrency:
- tok/s: output tokens / wall time of the whole batch (prefill included), ours and transformers';
- decode tok/s: output tokens / time spent in decode-only steps (steady state);
- roofline: 2 x parameters x decode tok/s / matmul GFLOP/s;
- python: the share of decode step time outside the model's forward and lm_head (scheduling,
  packing, sampling, bookkeeping).
"""

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from app.config import Settings  # noqa: E402
from app.engine.async_engine import AsyncEngine  # noqa: E402
from app.engine.sequence import SamplingParams  # noqa: E402
from app.service import build_engine  # noqa: E402


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class ModelClock:
    """Accumulates time spent inside the model's forward and lm_head."""

    def __init__(self, model):
        self.seconds = 0.0
        for name in ("forward", "logits"):
            setattr(model, name, self._wrap(getattr(model, name)))

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            return out

        return timed


def run_engine(engine, prompts: list[list[int]], new_tokens: int, clock: ModelClock) -> dict:
    decode = {"seconds": 0.0, "tokens": 0, "model": 0.0}

    def on_step(stats):
        if stats.phase == "decode":
            decode["seconds"] += stats.duration
            decode["tokens"] += stats.num_decode_tokens
            decode["model"] += clock.seconds
        clock.seconds = 0.0

    engine.step_listeners.append(on_step)
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)

    async def main():
        async_engine = AsyncEngine(engine)
        async_engine.start()

        async def one(i, prompt):
            return sum([len(o.token_ids) async for o in async_engine.add_request(f"b{i}", prompt, params)])

        try:
            start = time.perf_counter()
            counts = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
            return sum(counts), time.perf_counter() - start
        finally:
            async_engine.stop()

    clock.seconds = 0.0
    tokens, wall = asyncio.run(main())
    engine.step_listeners.remove(on_step)
    assert tokens == len(prompts) * new_tokens, tokens
    return {"tok_s": tokens / wall, "decode_tok_s": decode["tokens"] / decode["seconds"],
            "python": 1 - decode["model"] / decode["seconds"], "wall": wall}


def run_transformers(hf_model, prompts: list[list[int]], new_tokens: int) -> dict:
    ids = torch.tensor(prompts)
    with torch.inference_mode():
        start = time.perf_counter()
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        wall = time.perf_counter() - start
    tokens = (out.shape[1] - ids.shape[1]) * out.shape[0]
    return {"tok_s": tokens / wall, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2", help="model whose shapes to use (dummy weights)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per request")
    parser.add_argument("--new", type=int, default=128, help="new tokens per request")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers reference")
    args = parser.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel

    settings = Settings(model=args.model, load_format="dummy", device="cpu", dtype=args.dtype,
                        max_batch_size=max(args.concurrency), max_num_batched_tokens=2048,
                        max_queue=max(args.concurrency))
    engine, _, info = build_engine(settings)
    clock = ModelClock(engine.runner.model)
    config = engine.runner.model.config
    hf_model = None
    if not args.no_transformers:
        hf_config = GPT2Config(n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head)
        hf_model = GPT2LMHeadModel(hf_config).to(getattr(torch, args.dtype)).eval()
    gflops = matmul_gflops()
    params = config.num_parameters
    print(f"# {info.source} shapes, {params / 1e6:.1f}M parameters, {args.dtype}, {torch.get_num_threads()} threads; "
          f"prompt {args.prompt}, new {args.new}; matmul {gflops:.0f} GFLOP/s")
    print(f"{'conc':>4} {'ours tok/s':>10} {'hf tok/s':>9} {'ratio':>6} {'decode tok/s':>12} {'roofline':>8} "
          f"{'python':>7}")
    gen = torch.Generator().manual_seed(0)
    for c in args.concurrency:
        prompts = torch.randint(0, config.vocab_size, (c, args.prompt), generator=gen).tolist()
        ours = run_engine(engine, prompts, args.new, clock)
        hf = run_transformers(hf_model, prompts, args.new) if hf_model is not None else None
        roofline = 2 * params * ours["decode_tok_s"] / (gflops * 1e9)
        hf_text = f"{hf['tok_s']:9.1f} {ours['tok_s'] / hf['tok_s']:6.2f}" if hf else f"{'-':>9} {'-':>6}"
        print(f"{c:4d} {ours['tok_s']:10.1f} {hf_text} {ours['decode_tok_s']:12.1f} {roofline:8.1%} "
              f"{ours['python']:7.1%}", flush=True)


if __name__ == "__main__":
    main()
