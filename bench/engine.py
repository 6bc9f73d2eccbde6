"""Engine throughput against transformers' batched generate and the machine's matmul roofline.
(The engine core is stepped in this process: the step itself, without the transport to the API.)

    python bench/engine.py [--model gpt2] [--concurrency 1 8 32 64] [--prompt 128] [--new 128] [--device cuda]

Everything is measured in this one process, side by side: a large fp32 matmul (the roofline),
then for each concurrency our engine and transformers' `generate` on the same batch (dummy
weights, greedy, EOS ignored, so every sequence makes exactly --new tokens).

Reported per concurrency:
- tok/s: output tokens / wall time of the whole batch (prefill included), ours and transformers';
- decode tok/s: output tokens / time spent in decode-only steps (steady state);
- roofline: 2 x parameters x decode tok/s / the large matmul's GFLOP/s (torch's default, and
  oneDNN's, which on AMD CPUs is about twice MKL's; on a GPU, a matmul in --dtype on the device);
- python: the share of decode step time outside the model's forward and lm_head (scheduling,
  packing, sampling, bookkeeping).
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

from app.config import Settings  # noqa: E402
from app.engine.process import build_core  # noqa: E402
from app.engine.protocol import EngineRequest, SamplingParams  # noqa: E402


def matmul_gflops(n: int = 4096, repeats: int = 5) -> tuple[float, float]:
    """GFLOP/s of a large fp32 matmul: torch's default (`a @ b`, MKL on x86) and through oneDNN
    with a prepacked weight (what the engine's linear layers use on a CPU). On AMD CPUs MKL
    takes a non-AVX-512 path, so the second is the better estimate of the machine's peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    default = min(_timed(lambda: a @ b) for _ in range(repeats))
    packed = torch.ops.mkldnn._reorder_linear_weight(b)
    onednn = min(_timed(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
                 for _ in range(repeats))
    return 2 * n**3 / default / 1e9, 2 * n**3 / onednn / 1e9


def device_gflops(device: torch.device, dtype: torch.dtype, n: int = 8192, repeats: int = 5) -> float:
    """TFLOP-class accelerators: GFLOP/s of a large matmul in the run's dtype on the device."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    return 2 * n**3 / min(_timed(lambda: a @ b) for _ in range(repeats)) / 1e9


def synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn) -> float:
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


class ModelClock:
    """Accumulates time spent inside the model's forward and lm_head (on a GPU, synchronized
    around each call, so that the kernels' time counts as the model's)."""

    def __init__(self, runner):
        self.seconds, self.depth = 0.0, 0
        if runner.static is not None:  # fixed-shape decode steps (a CUDA graph's replay calls no forward)
            runner.static.run = self._wrap(runner.static.run)
        for name in ("forward", "logits"):
            setattr(runner.model, name, self._wrap(getattr(runner.model, name)))

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            synchronize()
            start = time.perf_counter()
            self.depth += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                self.depth -= 1
            synchronize()
            if not self.depth:  # a forward inside an eager fixed-shape step counts once
                self.seconds += time.perf_counter() - start
            return out

        return timed


def run_engine(core, prompts: list[list[int]], new_tokens: int, clock: ModelClock) -> dict:
    """All requests submitted at once, then the step loop until they finish, in this process (as
    the engine process runs it, without the transport)."""
    decode = {"seconds": 0.0, "tokens": 0, "model": 0.0}
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        core.add(EngineRequest(f"b{start}-{i}", prompt, params, time.monotonic()))
    clock.seconds, tokens = 0.0, 0
    while core.has_unfinished():
        outputs, stats = core.step()
        tokens += sum(len(out.token_ids) for out in outputs)
        if stats is not None and stats.phase == "decode":
            decode["seconds"] += stats.duration
            decode["tokens"] += stats.num_decode_tokens
            decode["model"] += clock.seconds
        clock.seconds = 0.0
    wall = time.perf_counter() - start
    assert tokens == len(prompts) * new_tokens, tokens
    return {"tok_s": tokens / wall, "decode_tok_s": decode["tokens"] / decode["seconds"],
            "python": 1 - decode["model"] / decode["seconds"], "wall": wall}


def run_transformers(hf_model, prompts: list[list[int]], new_tokens: int) -> dict:
    ids = torch.tensor(prompts, device=hf_model.device)
    with torch.inference_mode():
        synchronize()
        start = time.perf_counter()
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        synchronize()
        wall = time.perf_counter() - start
    tokens = (out.shape[1] - ids.shape[1]) * out.shape[0]
    return {"tok_s": tokens / wall, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2", help="model whose shapes to use (dummy weights)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (ours and transformers' alike)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per request")
    parser.add_argument("--new", type=int, default=128, help="new tokens per request")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers reference")
    parser.add_argument("--cuda-graphs", nargs="+", default=["auto"], choices=["auto", "off"],
                        help="GPT2_CUDA_GRAPHS; both (auto off) compares them in one run")
    args = parser.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel

    cores = {}
    for graphs in args.cuda_graphs:
        settings = Settings(model=args.model, load_format="dummy", device=args.device, dtype=args.dtype,
                            max_batch_size=max(args.concurrency),
                            max_num_batched_tokens=max(2048, max(args.concurrency)), max_queue=max(args.concurrency),
                            cuda_graphs=graphs)
        core, info = build_core(settings)
        cores[graphs] = core, ModelClock(core.runner)
    config = core.runner.model.config
    hf_model = None
    if not args.no_transformers:
        hf_config = GPT2Config(n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head)
        hf_model = GPT2LMHeadModel(hf_config).to(info.device, getattr(torch, args.dtype)).eval()
    if info.device == "cpu":
        gflops, onednn_gflops = matmul_gflops()
        peak = f"4096^3 fp32 matmul: {gflops:.0f} GFLOP/s (torch default), {onednn_gflops:.0f} GFLOP/s (oneDNN)"
    else:
        gflops = onednn_gflops = device_gflops(torch.device(info.device), getattr(torch, args.dtype))
        peak = f"on {torch.cuda.get_device_name(info.device)}: 8192^3 {args.dtype} matmul {gflops / 1e3:.0f} TFLOP/s"
    params = config.num_parameters
    print(f"# {info.source} shapes, {params / 1e6:.1f}M parameters, {args.dtype}, {torch.get_num_threads()} threads; "
          f"prompt {args.prompt}, new {args.new}; {peak}")
    print(f"{'conc':>4} {'graphs':>6} {'ours tok/s':>10} {'hf tok/s':>9} {'ratio':>6} {'decode tok/s':>12} "
          f"{'roofline':>8} {'(oneDNN)':>8} {'python':>7}")
    gen = torch.Generator().manual_seed(0)
    for c in args.concurrency:
        prompts = torch.randint(0, config.vocab_size, (c, args.prompt), generator=gen).tolist()
        hf = run_transformers(hf_model, prompts, args.new) if hf_model is not None else None
        for core, clock in cores.values():
            ours = run_engine(core, prompts, args.new, clock)
            flops = 2 * params * ours["decode_tok_s"]
            hf_text = f"{hf['tok_s']:9.1f} {ours['tok_s'] / hf['tok_s']:6.2f}" if hf else f"{'-':>9} {'-':>6}"
            on = "on" if core.runner.static is not None and core.runner.static.graphs else "off"
            print(f"{c:4d} {on:>6} {ours['tok_s']:10.1f} {hf_text} {ours['decode_tok_s']:12.1f} "
                  f"{flops / gflops / 1e9:8.1%} {flops / onednn_gflops / 1e9:8.1%} {ours['python']:7.1%}", flush=True)


if __name__ == "__main__":
    main()
