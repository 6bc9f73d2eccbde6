"""Prefix reuse changes nothing but the work done: one randomized workload of mixed concurrent
traffic (shared contexts, forks, echo scores, context/continuation scores, seeded samples,
follow-up turns, aborts, evictions), stepped on the tiny model with reuse on and with it off, gives
the same tokens and the same numbers."""

import random

import pytest

from app.config import Settings
from app.engine.process import build_core
from app.engine.protocol import EmbedParams, ExplainParams, SamplingParams
from tests.unit.test_engine import drive, request, tokens_of

TOL = 1e-4  # as the parity tests


def workload(seed: int) -> tuple[dict[int, list], dict[int, list[str]], set[str]]:
    """Arrivals by step, aborts by step, and the ids of requests whose output is not compared."""
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(50257) for _ in range(n)]

    contexts = [ids(40), ids(90), ids(150)]
    arrivals: dict[int, list] = {}
    kinds = ["greedy", "sampled", "echo", "score", "greedy_echo", "fork", "explain", "embed"]
    for i in range(40):
        context = rng.choice([*contexts, []])
        prompt = context + ids(rng.randint(1 if context else 3, 20))
        kind = kinds[i % len(kinds)]
        if kind == "greedy":
            params = [SamplingParams(max_tokens=rng.randint(1, 20), temperature=0.0, logprobs=2, ignore_eos=True)]
        elif kind == "sampled":
            params = [SamplingParams(max_tokens=12, temperature=0.9, top_k=40, seed=i,
                                     repetition_penalty=1.1, ignore_eos=True)]
        elif kind == "echo":  # lm-eval's loglikelihood: echo + logprobs, nothing generated
            params = [SamplingParams(max_tokens=0, prompt_logprobs=rng.choice([0, 1, 3]))]
        elif kind == "score":  # /v1/score of a continuation given the context, with statistics
            params = [SamplingParams(max_tokens=0, prompt_logprobs=2, prompt_stats=True,
                                     prompt_logprobs_from=max(1, len(context)))]
        elif kind == "greedy_echo":
            params = [SamplingParams(max_tokens=5, temperature=0.0, prompt_logprobs=1, ignore_eos=True)]
        elif kind == "explain":  # /v1/score's explain near the end: the shared context before it is reusable
            positions = sorted({len(prompt) - 1, max(0, len(prompt) - 3)})
            params = [SamplingParams(max_tokens=0, prompt_logprobs=1, explain=ExplainParams(positions, 3, 2))]
        elif kind == "embed":  # mean pooling reads every position: nothing reused
            params = [SamplingParams(max_tokens=0, embed=EmbedParams(layers=[1, 2], pooling=["mean", "last"]))]
        else:  # n = 3 choices of one prompt
            # top_k: a draw over the tiny model's nearly flat 50k-token distribution lands within float
            # rounding of a boundary between two tokens every few hundred draws, reuse or not
            params = [SamplingParams(max_tokens=8, temperature=1.0, top_k=40, seed=100 * i + j, ignore_eos=True)
                      for j in range(3)]
        step = rng.randrange(0, 40)
        for j, p in enumerate(params):
            arrivals.setdefault(step, []).append(request(f"r{i}-{j}", prompt, p))
    # long prompts aborted part-way: what they computed stays in the cache for others
    aborted = set()
    aborts: dict[int, list[str]] = {}
    for i in range(3):
        rid = f"abort{i}"
        arrivals.setdefault(5 * i, []).append(request(rid, contexts[2] + ids(30), SamplingParams(max_tokens=4)))
        aborts.setdefault(5 * i + 2, []).append(rid)
        aborted.add(rid)
    return arrivals, aborts, aborted


def assert_ranks_close(a: list[int], b: list[int]) -> None:
    """Ranks equal, but deep in the tail, where thousands of tokens lie within float rounding of
    each other, by one in a thousand (other batch-mates round differently, reuse or not)."""
    assert len(a) == len(b) and all(abs(x - y) <= y // 1000 for x, y in zip(a, b, strict=True)), (a, b)


def assert_same(on: list, off: list) -> None:
    assert tokens_of(on) == tokens_of(off)
    assert [o.finish_reason for o in on][-1:] == [o.finish_reason for o in off][-1:]
    lp_on = [lp for o in on for lp in o.logprobs]
    lp_off = [lp for o in off for lp in o.logprobs]
    assert [lp.logprob for lp in lp_on] == pytest.approx([lp.logprob for lp in lp_off], abs=TOL)
    assert_ranks_close([lp.rank for lp in lp_on], [lp.rank for lp in lp_off])
    assert [[t for t, _ in lp.top] for lp in lp_on] == [[t for t, _ in lp.top] for lp in lp_off]
    s_on = next((o.prompt_scores for o in on if o.prompt_scores is not None), None)
    s_off = next((o.prompt_scores for o in off if o.prompt_scores is not None), None)
    assert (s_on is None) == (s_off is None)
    if s_on is not None:
        assert s_on.token_logprobs == pytest.approx(s_off.token_logprobs, abs=TOL)
        assert_ranks_close(s_on.ranks, s_off.ranks)
        assert [[t for t, _ in top] for top in s_on.top] == [[t for t, _ in top] for top in s_off.top]
        assert [v for top in s_on.top for _, v in top] == pytest.approx([v for top in s_off.top for _, v in top],
                                                                        abs=TOL)
        assert s_on.entropy == pytest.approx(s_off.entropy, abs=TOL)
        assert s_on.logprob_variance == pytest.approx(s_off.logprob_variance, abs=TOL)
    r_on = next((o.readout for o in on if o.readout is not None), None)
    r_off = next((o.readout for o in off if o.readout is not None), None)
    assert (r_on is None) == (r_off is None)
    if r_on is not None:
        assert [v for e in r_on.embeddings for v in e] == pytest.approx([v for e in r_off.embeddings for v in e],
                                                                        abs=TOL)
        for a, b in zip(r_on.explanation, r_off.explanation, strict=True):
            assert a.position == b.position and a.attention_keys == b.attention_keys
            assert a.attention_weights == pytest.approx(b.attention_weights, abs=TOL)
            assert a.lens_token_ids == b.lens_token_ids and a.lens_probs == pytest.approx(b.lens_probs, abs=TOL)


@pytest.fixture(scope="module")
def cores(tiny_model_dir):
    # few slots (evictions), a small step budget (chunked prefills, copies next to prefills)
    def core(caching: bool):
        return build_core(Settings(model=tiny_model_dir, max_batch_size=6, max_num_batched_tokens=64,
                                   prefix_caching=caching))[0]

    return core(True), core(False)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_mixed_workload_gives_the_same_results_with_reuse_on_and_off(cores, seed):
    on, off = cores
    arrivals, aborts, aborted = workload(seed)
    evictions = on.scheduler.cache.evictions
    results = {name: drive(core, arrivals, aborts) for name, core in (("on", on), ("off", off))}
    compared = sorted(set(results["off"]) - aborted)
    assert len(compared) == 50
    for rid in compared:
        assert_same(results["on"][rid], results["off"][rid])
    reused = sum(results["on"][rid][-1].stats.cached_tokens for rid in compared)
    assert reused > 2000 and on.scheduler.cache.evictions > evictions  # reuse (and eviction) really happened
    assert all(results["off"][rid][-1].stats.cached_tokens == 0 for rid in compared)

    # the conversations go on: prompt = prompt + completion + a new turn, reusing generated tokens' keys
    follow: dict[int, list] = {0: []}
    for reqs in arrivals.values():
        for req in reqs:
            if req.request_id in compared and req.params.temperature == 0.0 and req.params.max_tokens > 0:
                out = tokens_of(results["off"][req.request_id])
                follow[0].append(request(f"{req.request_id}+", req.prompt_token_ids + out + [11, 12, 13],
                                         SamplingParams(max_tokens=6, temperature=0.0, prompt_logprobs=1)))
    turns = {name: drive(core, follow) for name, core in (("on", on), ("off", off))}
    for rid in turns["off"]:
        assert_same(turns["on"][rid], turns["off"][rid])
    assert sum(turns["on"][rid][-1].stats.cached_tokens for rid in turns["on"]) > 0
