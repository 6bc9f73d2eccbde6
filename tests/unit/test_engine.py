"""The engine end to end on the tiny model: continuous batching gives each request exactly
what it would get alone, seeds are per request, aborts free slots, failures stay contained."""

import asyncio
import random

import pytest
import torch

from app.config import Settings
from app.engine.async_engine import AsyncEngine
from app.engine.engine import InvalidRequestError
from app.engine.scheduler import QueueFullError
from app.engine.sequence import FinishReason, SamplingParams
from app.service import build_engine


@pytest.fixture(scope="module")
def sync_engine(tiny_model_dir):
    # a small step budget and fewer slots than requests: chunked prefill, queueing, slot reuse
    settings = Settings(model=tiny_model_dir, max_batch_size=8, max_num_batched_tokens=64, max_queue=64)
    engine, tokenizer, info = build_engine(settings)
    return engine


def run(engine, scenario):
    """Run `scenario(async_engine)` on a fresh loop thread around the shared engine."""

    async def main():
        async_engine = AsyncEngine()
        async_engine.start(engine)
        try:
            return await scenario(async_engine)
        finally:
            async_engine.stop()

    return asyncio.run(main())


async def collect(async_engine, request_id, prompt, params, delay=0.0):
    await asyncio.sleep(delay)
    tokens, outputs = [], []
    async for out in async_engine.add_request(request_id, prompt, params):
        tokens += out.token_ids
        outputs.append(out)
    return tokens, outputs


def hf_greedy(hf_model, prompt, max_tokens):
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                                pad_token_id=50256, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt) :].tolist()


def test_staggered_greedy_requests_match_transformers_alone(sync_engine, hf_model):
    rng = random.Random(0)
    lengths = [1, 200, *[rng.randint(2, 199) for _ in range(14)]]
    max_tokens = [64, 1, *[rng.randint(1, 64) for _ in range(14)]]
    prompts = [[rng.randrange(50257) for _ in range(n)] for n in lengths]

    async def scenario(engine):
        jobs = [collect(engine, f"r{i}", p, SamplingParams(max_tokens=m, temperature=0.0), delay=0.02 * (i % 5))
                for i, (p, m) in enumerate(zip(prompts, max_tokens, strict=True))]
        return await asyncio.gather(*jobs)

    results = run(sync_engine, scenario)
    for prompt, m, (tokens, outputs) in zip(prompts, max_tokens, results, strict=True):
        expected = hf_greedy(hf_model, prompt, m)
        assert tokens == expected
        assert outputs[-1].finish_reason is (FinishReason.STOP if expected[-1] == 50256 and len(expected) < m
                                             else FinishReason.LENGTH)
        assert sum(o.finished for o in outputs) == 1
    assert sync_engine.num_running == 0 and sync_engine.num_waiting == 0


def test_seeded_request_is_the_same_alone_and_in_a_batch(sync_engine):
    rng = random.Random(1)
    prompt = [rng.randrange(50257) for _ in range(20)]
    params = SamplingParams(max_tokens=40, temperature=0.9, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)

    async def alone(engine):
        return (await collect(engine, "seeded", prompt, params))[0]

    async def crowded(engine):
        others = [collect(engine, f"o{i}", [rng.randrange(50257) for _ in range(rng.randint(1, 100))],
                          SamplingParams(max_tokens=rng.randint(1, 50), temperature=1.0), delay=0.01 * i)
                  for i in range(16)]
        results = await asyncio.gather(collect(engine, "seeded", prompt, params, delay=0.03), *others)
        return results[0][0]

    first = run(sync_engine, alone)
    assert len(first) == 40
    assert run(sync_engine, crowded) == first
    # a different seed gives a different continuation (so the seed is really used)
    other = SamplingParams(**{**params.__dict__, "seed": 99})
    assert run(sync_engine, lambda e: collect(e, "s2", prompt, other))[0] != first


def test_aborting_half_frees_their_slots_and_the_rest_finish(sync_engine):
    async def scenario(engine):
        streams = [engine.add_request(f"a{i}", [i + 1] * 10, SamplingParams(max_tokens=60, temperature=0.0,
                                                                           ignore_eos=True)) for i in range(16)]
        seen = {s.request_id: [] for s in streams}

        async def drain(stream):
            async for out in stream:
                seen[stream.request_id].append(out)

        tasks = [asyncio.create_task(drain(s)) for s in streams]
        while sync_engine.num_running < 8 or not all(seen[s.request_id] for s in streams[:8]):
            await asyncio.sleep(0.005)
        for stream in streams[::2]:
            engine.abort(stream.request_id)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return streams, seen

    streams, seen = run(sync_engine, scenario)
    for i, stream in enumerate(streams):
        outs = seen[stream.request_id]
        assert [o.finished for o in outs].count(True) == 1 and outs[-1].finished  # answered exactly once
        if i % 2:
            assert outs[-1].finish_reason is FinishReason.LENGTH
            assert sum(len(o.token_ids) for o in outs) == 60
        else:
            assert outs[-1].finish_reason is FinishReason.ABORT
    assert sync_engine.num_running == 0 and sync_engine.num_waiting == 0
    assert sorted(sync_engine.scheduler._free_slots) == list(range(8))


def test_refusals_happen_at_submission(sync_engine):
    async def scenario(engine):
        with pytest.raises(InvalidRequestError, match="512"):
            engine.add_request("long", [1] * 500, SamplingParams(max_tokens=13))
        with pytest.raises(InvalidRequestError):
            engine.add_request("empty", [], SamplingParams())
        with pytest.raises(InvalidRequestError):
            engine.add_request("oov", [50257], SamplingParams())
        # fill the queue: at most 8 run (slots), 64 wait, the next is refused
        params = SamplingParams(max_tokens=50, ignore_eos=True, temperature=0.0)
        streams = []
        with pytest.raises(QueueFullError):
            for i in range(200):
                streams.append(engine.add_request(f"q{i}", [1, 2, 3], params))
        assert 64 <= len(streams) <= 64 + 8
        for s in streams:
            s.close()
        return True

    assert run(sync_engine, scenario)


def test_a_failing_step_fails_its_sequences_and_the_engine_goes_on(sync_engine, monkeypatch):
    real_execute = sync_engine.runner.execute
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected")
        return real_execute(batch)

    monkeypatch.setattr(sync_engine.runner, "execute", flaky)

    async def scenario(engine):
        first = await collect(engine, "doomed", [5, 6, 7], SamplingParams(max_tokens=5, temperature=0.0))
        second = await collect(engine, "fine", [5, 6, 7], SamplingParams(max_tokens=5, temperature=0.0))
        return first, second

    (t1, o1), (t2, o2) = run(sync_engine, scenario)
    assert o1[-1].finish_reason is FinishReason.ERROR and "injected" in o1[-1].error and t1 == []
    assert o2[-1].finish_reason is FinishReason.LENGTH and len(t2) == 5


def test_prompt_scores_from_a_later_token_equal_the_tail_of_full_scores(sync_engine):
    prompt = list(range(100, 300))  # 200 tokens: several prefill chunks at a budget of 64

    async def scenario(engine):
        full = SamplingParams(max_tokens=0, prompt_logprobs=2, prompt_stats=True)
        tail = SamplingParams(max_tokens=0, prompt_logprobs=2, prompt_stats=True, prompt_logprobs_from=150)
        a = (await collect(engine, "full", prompt, full))[1][-1].prompt_scores
        b = (await collect(engine, "tail", prompt, tail))[1][-1].prompt_scores
        return a, b

    full, tail = run(sync_engine, scenario)
    assert len(full.token_logprobs) == 199 and len(tail.token_logprobs) == 50
    assert tail.token_logprobs == pytest.approx(full.token_logprobs[149:], abs=1e-5)
    assert tail.ranks == full.ranks[149:] and [t for t, _ in tail.top[0]] == [t for t, _ in full.top[149]]
    assert tail.entropy == pytest.approx(full.entropy[149:], abs=1e-5)
    with pytest.raises(InvalidRequestError):
        sync_engine.validate(prompt, SamplingParams(max_tokens=0, prompt_logprobs=0, prompt_logprobs_from=200))


def test_an_abort_during_a_step_is_answered_once_and_frees_the_slot(sync_engine, monkeypatch):
    import threading

    real_execute = sync_engine.runner.execute
    live = {}

    def execute_with_an_abort_in_the_middle(batch):
        results = real_execute(batch)
        if any(seq.request_id == "victim" for seq in batch.decodes) and "aborted" not in live:
            done = threading.Event()  # the client's abort lands while this step is still running

            def abort():
                live["engine"].abort("victim")
                live["aborted"] = True
                done.set()

            live["loop"].call_soon_threadsafe(abort)
            assert done.wait(10)
        return results

    monkeypatch.setattr(sync_engine.runner, "execute", execute_with_an_abort_in_the_middle)

    async def scenario(engine):
        live.update(engine=engine, loop=asyncio.get_running_loop())
        params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
        return await asyncio.gather(collect(engine, "victim", [7, 8, 9], params),
                                    collect(engine, "bystander", [7, 8, 9], params))

    (victim_tokens, victim), (tokens, bystander) = run(sync_engine, scenario)
    assert [o.finish_reason for o in victim if o.finished] == [FinishReason.ABORT]  # once, and last
    assert victim[-1].finish_reason is FinishReason.ABORT and len(victim_tokens) < 30
    assert len(tokens) == 30 and bystander[-1].finish_reason is FinishReason.LENGTH
    assert sync_engine.num_running == 0 and sorted(sync_engine.scheduler._free_slots) == list(range(8))


def test_a_checkpoint_with_a_padded_vocabulary_never_emits_unknown_tokens(tmp_path):
    import shutil

    from app.model.loader import PACKAGED_TOKENIZER
    from tests.conftest import make_hf_model

    model = make_hf_model(vocab_size=50304)  # padded to a multiple of 64, as nanoGPT-trained checkpoints are
    with torch.no_grad():
        model.transformer.wte.weight[50257:] *= 50  # the padding rows would win every argmax
    model.save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(PACKAGED_TOKENIZER / name, tmp_path / name)
    engine, tokenizer, _ = build_engine(Settings(model=str(tmp_path), max_batch_size=2, max_num_batched_tokens=64))
    assert engine.vocab_size == tokenizer.vocab_size == 50257
    with pytest.raises(InvalidRequestError):
        engine.validate([50300], SamplingParams())
    engine.add_request("r", [1, 2, 3], SamplingParams(max_tokens=20, temperature=0.0, logprobs=5, ignore_eos=True))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    tokens = [t for o in outputs for t in o.token_ids]
    assert len(tokens) == 20 and max(tokens) < 50257
    assert all(t < 50257 for o in outputs for lp in o.logprobs for t, _ in lp.top)
