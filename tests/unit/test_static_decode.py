"""The fixed-shape decode step (app/engine/graphs.py) on the CPU, where it runs eagerly: its
buckets, its padding, and results equal to the dynamic step's. On a GPU the same step is captured
as CUDA graphs: tests/cuda/ checks that (pytest -m cuda)."""

import random

import numpy as np
import pytest
import torch

from app.config import Settings
from app.engine.graphs import batch_buckets, bucket, key_buckets
from app.engine.process import build_core
from app.engine.protocol import SamplingParams
from tests.unit.test_engine import drive, request, tokens_of

TOL = 1e-4


def test_buckets():
    assert batch_buckets(32) == [1, 2, 4, 8, 16, 24, 32]
    assert batch_buckets(6) == [1, 2, 4, 6]
    assert batch_buckets(100) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 100]
    assert batch_buckets(256)[-3:] == [224, 240, 256] and batch_buckets(1) == [1]
    assert key_buckets(1024) == [64, 128, 256, 512, 1024] and key_buckets(100) == [64, 100]
    assert key_buckets(64) == [64] and key_buckets(10) == [10]
    assert [bucket(n, [1, 2, 4, 8]) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]


@pytest.fixture(scope="module")
def cores(tiny_model_dir):
    def core(static: bool, caching: bool = True):
        settings = Settings(model=tiny_model_dir, max_batch_size=6, max_num_batched_tokens=64, prefix_caching=caching)
        return build_core(settings, static_decode=static)[0]

    return core(True), core(False, caching=False)


def workload(seed: int) -> dict[int, list]:
    """Staggered arrivals (decode slots with holes between them, prefills beside decodes), prompts
    sharing a context (reuse next to padding rows), sequences long enough to cross key buckets."""
    rng = random.Random(seed)
    context = [rng.randrange(50257) for _ in range(40)]
    arrivals: dict[int, list] = {}
    for i in range(10):
        prompt = (context if i % 3 == 0 else []) + [rng.randrange(50257) for _ in range(rng.randint(1, 60))]
        if i % 2:
            params = SamplingParams(max_tokens=rng.randint(1, 100), temperature=0.0, logprobs=2, ignore_eos=True)
        else:
            params = SamplingParams(max_tokens=rng.randint(1, 100), temperature=0.8, top_k=40, seed=i,
                                    presence_penalty=0.3, ignore_eos=True)
        arrivals.setdefault(rng.randrange(0, 60), []).append(request(f"r{i}", prompt, params))
    return arrivals


@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_shape_decode_steps_give_what_dynamic_ones_do(cores, seed, monkeypatch):
    static, dynamic = cores
    steps = []
    run = static.runner.static.run
    monkeypatch.setattr(static.runner.static, "run", lambda *args: steps.append(len(args[0])) or run(*args))
    arrivals = workload(seed)
    got = drive(static, arrivals)
    want = drive(dynamic, arrivals)
    assert set(got) == set(want) and len(got) == 10
    assert len(steps) > 50 and max(steps) > 1  # the fixed-shape step really ran, with several rows
    for rid in want:
        assert tokens_of(got[rid]) == tokens_of(want[rid]), rid
        lp_got = [lp.logprob for o in got[rid] for lp in o.logprobs]
        lp_want = [lp.logprob for o in want[rid] for lp in o.logprobs]
        assert lp_got == pytest.approx(lp_want, abs=TOL)
    prompts = {r.request_id: len(r.prompt_token_ids) for reqs in arrivals.values() for r in reqs}
    assert max(prompts[rid] + len(tokens_of(outs)) for rid, outs in got.items()) > 128  # past two key buckets


def test_padding_rows_write_only_the_spare_slot(cores):
    static, _ = cores
    runner = static.runner
    spare = runner.static.spare
    assert spare == runner.cache.num_slots - 1 == 6
    before = runner.cache.k[:, :spare].clone()
    slots = np.array([1, 4])  # rows 0, 2, 3 (and 5 beyond the bucket) are padding
    tokens, positions = np.array([11, 12]), np.array([3, 7])
    with torch.inference_mode():
        runner.static.run(slots, tokens, positions, torch.from_numpy(slots))
    after = runner.cache.k[:, :spare]
    changed = (after != before).flatten(2).any(-1)  # [L, slots]: any key of that slot changed
    assert changed[:, [1, 4]].all() and not changed[:, [0, 2, 3, 5]].any()
    positions_changed = (after[:, 1] != before[:, 1]).any(-1).any(1).any(0)  # [P]
    assert positions_changed.nonzero().flatten().tolist() == [3]
