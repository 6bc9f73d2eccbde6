"""The engine core on the tiny model, stepped by hand: continuous batching gives each request
exactly what it would get alone, seeds are per request, aborts free slots, failures stay
contained. (The engine in its own process, behind the client, is tests/integration/test_engine_process.py.)"""

import os
import random
import time

import msgspec
import pytest
import torch
import zmq

from app.config import Settings
from app.engine import faults
from app.engine.core import CoreServer
from app.engine.faults import Fault
from app.engine.process import build_core
from app.engine.protocol import EngineRequest, FinishReason, Hello, SamplingParams, encoder
from tests.conftest import TINY


@pytest.fixture(scope="module")
def core(tiny_model_dir):
    # a small step budget and fewer slots than requests: chunked prefill, queueing, slot reuse
    core, _ = build_core(Settings(model=tiny_model_dir, max_batch_size=8, max_num_batched_tokens=64))
    return core


def request(request_id: str, prompt: list[int], params: SamplingParams) -> EngineRequest:
    return EngineRequest(request_id, prompt, params, time.monotonic())


def drive(core, arrivals: dict[int, list[EngineRequest]], aborts: dict[int, list[str]] = (), max_steps: int = 20000):
    """Step the core until all is done, adding arrivals[k] (and aborting aborts[k]) before step k.
    Returns each request's outputs, in order."""
    aborts = dict(aborts)
    outputs: dict[str, list] = {}
    for step in range(max_steps):
        for req in arrivals.get(step, []):
            core.add(req)
        for rid in aborts.get(step, []):
            out = core.abort(rid)
            if out is not None:
                outputs.setdefault(rid, []).append(out)
        if step > max(arrivals, default=0) and step > max(aborts, default=0) and not core.has_unfinished():
            return outputs
        for out in core.step()[0]:
            outputs.setdefault(out.request_id, []).append(out)
    raise AssertionError("the engine did not finish")


def tokens_of(outputs) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def hf_greedy(hf_model, prompt, max_tokens):
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                                pad_token_id=50256, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt) :].tolist()


def assert_idle(core) -> None:
    s = core.scheduler
    assert s.num_unfinished == 0 and s.cache.free == set(range(s.max_batch_size))


def test_staggered_greedy_requests_match_transformers_alone(core, hf_model):
    rng = random.Random(0)
    lengths = [1, 200, *[rng.randint(2, 199) for _ in range(14)]]
    max_tokens = [64, 1, *[rng.randint(1, 64) for _ in range(14)]]
    prompts = [[rng.randrange(50257) for _ in range(n)] for n in lengths]
    arrivals: dict[int, list] = {}
    for i, (p, m) in enumerate(zip(prompts, max_tokens, strict=True)):
        arrivals.setdefault(3 * (i % 5), []).append(request(f"r{i}", p, SamplingParams(max_tokens=m, temperature=0.0)))
    results = drive(core, arrivals)
    for i, (prompt, m) in enumerate(zip(prompts, max_tokens, strict=True)):
        outputs, expected = results[f"r{i}"], hf_greedy(hf_model, prompt, m)
        assert tokens_of(outputs) == expected
        assert outputs[-1].finish_reason is (FinishReason.STOP if expected[-1] == 50256 and len(expected) < m
                                             else FinishReason.LENGTH)
        assert sum(o.finished for o in outputs) == 1 and outputs[-1].stats.generation_tokens == len(expected)
    assert_idle(core)


def test_seeded_request_is_the_same_alone_and_in_a_batch(core):
    rng = random.Random(1)
    prompt = [rng.randrange(50257) for _ in range(20)]
    params = SamplingParams(max_tokens=40, temperature=0.9, top_p=0.9, top_k=50, seed=1234, ignore_eos=True,
                            repetition_penalty=1.2, min_p=0.01)
    first = tokens_of(drive(core, {0: [request("seeded", prompt, params)]})["seeded"])
    others = [request(f"o{i}", [rng.randrange(50257) for _ in range(rng.randint(1, 100))],
                      SamplingParams(max_tokens=rng.randint(1, 50), temperature=1.0, top_k=rng.choice([0, 5]),
                                     presence_penalty=rng.choice([0.0, 0.5])))
              for i in range(16)]
    crowded = drive(core, {0: others[:8], 2: [request("seeded", prompt, params)], 3: others[8:]})
    assert len(first) == 40 and tokens_of(crowded["seeded"]) == first
    # a different seed gives a different continuation (so the seed is really used)
    reseeded = msgspec.structs.replace(params, seed=99)
    assert tokens_of(drive(core, {0: [request("s2", prompt, reseeded)]})["s2"]) != first


def test_aborting_half_frees_their_slots_and_the_rest_finish(core):
    params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
    reqs = [request(f"a{i}", [i + 1] * 10, params) for i in range(16)]
    results = drive(core, {0: reqs}, aborts={5: [r.request_id for r in reqs[::2]]})
    for i, req in enumerate(reqs):
        outs = results[req.request_id]
        assert [o.finished for o in outs].count(True) == 1 and outs[-1].finished  # answered exactly once
        if i % 2:
            assert outs[-1].finish_reason is FinishReason.LENGTH and len(tokens_of(outs)) == 60
        else:
            assert outs[-1].finish_reason is FinishReason.ABORT and outs[-1].stats.finish_reason == "abort"
    assert_idle(core)


def test_a_failing_step_fails_its_sequences_and_the_engine_goes_on(core):
    core.fault = Fault(failing_steps=1)
    try:
        doomed = drive(core, {0: [request("doomed", [5, 6, 7], SamplingParams(max_tokens=5, temperature=0.0))]})
    finally:
        core.fault = None
    fine = drive(core, {0: [request("fine", [5, 6, 7], SamplingParams(max_tokens=5, temperature=0.0))]})
    last = doomed["doomed"][-1]
    assert last.finish_reason is FinishReason.ERROR and "injected" in last.error and tokens_of(doomed["doomed"]) == []
    assert fine["fine"][-1].finish_reason is FinishReason.LENGTH and len(tokens_of(fine["fine"])) == 5
    assert_idle(core)



@pytest.mark.parametrize("enabled", [True, False])
def test_the_engine_accepts_a_fault_only_where_the_tests_enable_faults(core, tmp_path, monkeypatch, enabled):
    """Fault is not part of the protocol: an engine without GPT2_TEST_FAULTS=1 drops it (and goes on)."""
    if not enabled:
        monkeypatch.delenv(faults.ENABLE)
    server = CoreServer(core, f"ipc://{tmp_path}/engine", "cpu", os.getppid())
    client = zmq.Context.instance().socket(zmq.DEALER)
    client.connect(f"ipc://{tmp_path}/engine")
    try:
        client.send(encoder().encode(Fault(failing_steps=1)))
        client.send(encoder().encode(Hello()))  # handled after the fault (one connection keeps the order)
        for _ in range(100):
            server._receive(100)
            if server.stats_client is not None:
                break
        assert server.stats_client is not None
        assert core.fault == (Fault(failing_steps=1) if enabled else None)
    finally:
        core.fault = None
        client.close(linger=0)
        server.socket.close(linger=0)

def test_prompt_scores_from_a_later_token_equal_the_tail_of_full_scores(core):
    prompt = list(range(100, 300))  # 200 tokens: several prefill chunks at a budget of 64
    full = SamplingParams(max_tokens=0, prompt_logprobs=2, prompt_stats=True)
    tail = SamplingParams(max_tokens=0, prompt_logprobs=2, prompt_stats=True, prompt_logprobs_from=150)
    a = drive(core, {0: [request("full", prompt, full)]})["full"][-1].prompt_scores
    b = drive(core, {0: [request("tail", prompt, tail)]})["tail"][-1].prompt_scores
    assert len(a.token_logprobs) == 199 and len(b.token_logprobs) == 50
    assert b.token_logprobs == pytest.approx(a.token_logprobs[149:], abs=1e-5)
    assert b.ranks == a.ranks[149:] and [t for t, _ in b.top[0]] == [t for t, _ in a.top[149]]
    assert b.entropy == pytest.approx(a.entropy[149:], abs=1e-5)


def test_stop_token_ids_min_tokens_and_logprobs(core, hf_model):
    prompt = [464, 3290, 318]
    greedy = hf_greedy(hf_model, prompt, 12)
    stop_at = greedy[5]
    params = SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=[stop_at], logprobs=3, ignore_eos=True)
    outs = drive(core, {0: [request("s", prompt, params)]})["s"]
    got = tokens_of(outs)
    assert got == greedy[: greedy.index(stop_at) + 1] and outs[-1].finish_reason is FinishReason.STOP
    assert all(len(o.logprobs) == 1 and o.logprobs[0].rank == 1 and len(o.logprobs[0].top) == 3 for o in outs)
    held = SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=[greedy[0]], min_tokens=3, ignore_eos=True)
    assert greedy[0] not in tokens_of(drive(core, {0: [request("h", prompt, held)]})["h"])[:3]


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
    core, info = build_core(Settings(model=str(tmp_path), max_batch_size=2, max_num_batched_tokens=64))
    assert info.vocab_size == 50257 and info.max_model_len == TINY["n_positions"]
    params = SamplingParams(max_tokens=20, temperature=0.0, logprobs=5, ignore_eos=True)
    outputs = drive(core, {0: [request("r", [1, 2, 3], params)]})["r"]
    tokens = tokens_of(outputs)
    assert len(tokens) == 20 and max(tokens) < 50257
    assert all(t < 50257 for o in outputs for lp in o.logprobs for t, _ in lp.top)
