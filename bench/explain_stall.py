"""How long running decodes wait while a long prompt is explained, with the logit lens counted in
the step's token budget (the scheduler's lens_cost) and without it (lens_cost 0, as before).

    python bench/explain_stall.py [--model gpt2] [--tokens 512] [--decodes 8] [--repeats 2]

One engine in this process (dummy weights): --decodes sequences decode; then one --tokens prompt
is scored with explain at every position (attention 5, lens 5). Reported per setting, runs
alternated: the longest step while the explained prompt was prefilled (what each decoding stream
waits for its next token), the decodes' median step, and the time the explained prompt took.
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

from app.config import Settings  # noqa: E402
from app.engine.process import build_core  # noqa: E402
from app.engine.protocol import EngineRequest, ExplainParams, SamplingParams  # noqa: E402


def run(core, tokens: int, decodes: int, lens_cost: float) -> tuple[float, float, float]:
    """(longest step s, median step s, explained prompt s) while the explained prompt runs."""
    core.scheduler.lens_cost = lens_cost
    stamp = time.monotonic_ns()
    for i in range(decodes):
        params = SamplingParams(max_tokens=100_000, temperature=0.0, ignore_eos=True)
        core.add(EngineRequest(f"d{i}-{stamp}", [100 + i] * 8, params, time.monotonic()))
    core.step()  # the decodes' prompts
    params = SamplingParams(max_tokens=0, temperature=0.0, prompt_logprobs=0,
                            explain=ExplainParams(list(range(tokens)), attention_top_k=5, lens_top_k=5))
    core.add(EngineRequest(f"x-{stamp}", [(7 * j) % 50000 for j in range(tokens)], params, time.monotonic()))
    steps, start, done = [], time.perf_counter(), False
    while not done:
        began = time.perf_counter()
        outputs, _ = core.step()
        steps.append(time.perf_counter() - began)
        done = any(o.request_id == f"x-{stamp}" and o.finished for o in outputs)
    took = time.perf_counter() - start
    for i in range(decodes):
        core.abort(f"d{i}-{stamp}")
    core.step()
    return max(steps), statistics.median(steps), took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2", help="model whose shapes to use (dummy weights)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--decodes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = Settings(model=args.model, load_format="dummy", device="cpu", dtype="float32",
                        max_batch_size=args.decodes + 1, log_format="text", log_level="WARNING", metrics=False,
                        max_explain_positions=args.tokens)
    core, _ = build_core(settings)
    settings_lens = {"lens counted": core.scheduler.lens_cost, "lens not counted": 0.0}
    results = {name: [] for name in settings_lens}
    run(core, 64, args.decodes, 0.0)  # warm-up
    for _ in range(args.repeats):
        for name, cost in settings_lens.items():
            results[name].append(run(core, args.tokens, args.decodes, cost))
    print(f"# {args.model} shapes, dummy weights, fp32; {args.decodes} decoding, one {args.tokens}-token prompt "
          f"explained at every position (lens_cost {settings_lens['lens counted']:.2f}); best of {args.repeats}")
    for name, rows in results.items():
        longest, median, took = (min(column) for column in zip(*rows, strict=True))
        print(f"{name:<17} longest step {longest * 1e3:8.1f} ms   median step {median * 1e3:7.1f} ms   "
              f"explained prompt {took:6.2f} s")


if __name__ == "__main__":
    main()
