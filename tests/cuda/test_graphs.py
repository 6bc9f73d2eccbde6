"""On an NVIDIA GPU: the decode step captured as CUDA graphs gives what the eager step gives.
Run with `pytest -m cuda` (scripts/gpu-check.sh runs these and the GPU benchmarks); skipped, with
the reason, on a machine without CUDA."""

import random

import msgspec
import pytest

from app.config import Settings
from app.engine.graphs import batch_buckets
from app.engine.process import build_core
from app.engine.protocol import SamplingParams
from tests.unit.test_engine import drive, request, tokens_of
from tests.unit.test_static_decode import workload

pytestmark = pytest.mark.cuda
TOL = 1e-4


def core(model_dir: str, **settings):
    return build_core(Settings(model=model_dir, device="cuda", max_batch_size=6, max_num_batched_tokens=64,
                               **settings))


def test_graphs_are_captured_for_every_bucket_at_start_up(tiny_model_dir):
    engine, info = core(tiny_model_dir)
    assert info.device.startswith("cuda") and info.cuda_graphs == batch_buckets(6)
    assert len(engine.runner.static.graphs) == len(batch_buckets(6)) * len(engine.runner.static.keys)
    _, off = core(tiny_model_dir, cuda_graphs="off")
    assert off.cuda_graphs == []


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graphs_give_the_eager_results(tiny_model_dir, dtype):
    graphs, _ = core(tiny_model_dir, dtype=dtype)
    eager, _ = core(tiny_model_dir, dtype=dtype, cuda_graphs="off")
    arrivals = workload(0)
    got, want = drive(graphs, arrivals), drive(eager, arrivals)
    for rid in want:
        assert tokens_of(got[rid]) == tokens_of(want[rid]), rid
        lp_got = [lp.logprob for o in got[rid] for lp in o.logprobs]
        lp_want = [lp.logprob for o in want[rid] for lp in o.logprobs]
        assert lp_got == pytest.approx(lp_want, abs=TOL if dtype == "float32" else 0.05)


def test_a_seeded_request_is_the_same_alone_and_in_any_batch_with_graphs(tiny_model_dir):
    engine, _ = core(tiny_model_dir, dtype="float32")
    rng = random.Random(1)
    prompt = [rng.randrange(50257) for _ in range(20)]
    params = SamplingParams(max_tokens=40, temperature=0.9, top_k=50, seed=1234, ignore_eos=True)
    alone = tokens_of(drive(engine, {0: [request("seeded", prompt, params)]})["seeded"])
    others = [request(f"o{i}", [rng.randrange(50257) for _ in range(rng.randint(1, 60))],
                      SamplingParams(max_tokens=rng.randint(1, 50), temperature=1.0)) for i in range(8)]
    crowded = drive(engine, {0: others[:4], 2: [request("seeded", prompt, params)], 3: others[4:]})
    assert tokens_of(crowded["seeded"]) == alone
    reseeded = request("s2", prompt, msgspec.structs.replace(params, seed=9))
    assert tokens_of(drive(engine, {0: [reseeded]})["s2"]) != alone


def test_prompt_scores_are_the_same_with_graphs_on_and_off(tiny_model_dir):
    params = SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=2, prompt_stats=True)
    prompt = list(range(100, 300))
    scores = {}
    for graphs in ("auto", "off"):
        engine, _ = core(tiny_model_dir, dtype="float32", cuda_graphs=graphs)
        outputs = drive(engine, {0: [request("a", prompt[:50], params)], 1: [request("b", prompt, params)]})
        scores[graphs] = [next(o.prompt_scores for o in outputs[rid] if o.prompt_scores) for rid in ("a", "b")]
    for on, off in zip(scores["auto"], scores["off"], strict=True):
        assert on.token_logprobs == pytest.approx(off.token_logprobs, abs=TOL) and on.ranks == off.ranks
