"""Sampling on hand-made logits: each knob does what it says, draws follow the distribution,
a seeded row draws the same whatever else is in the batch, and the per-slot state is reused."""

import numpy as np
import pytest
import torch

from app.engine.protocol import SamplingParams
from app.engine.sampler import Sampler
from app.model.sampling import apply_penalties, keep_top_k, keep_top_p, uniform

V = 50
EOS = V - 1


def sampler_for(*params: SamplingParams, outputs=None, seeds=None) -> Sampler:
    """A sampler whose slot i holds a sequence with params[i] (prompt [1, 2, 3])."""
    sampler = Sampler(max(8, len(params)), V, EOS)
    for i, p in enumerate(params):
        seed = (seeds or {}).get(i, p.seed if p.seed is not None else 1000 + i)
        sampler.add(i, p, seed, [1, 2, 3], list((outputs or {}).get(i, [])))
    return sampler


def sample(sampler: Sampler, x: torch.Tensor, slots=None):
    tokens, logprobs = sampler.sample(x, np.arange(len(x)) if slots is None else np.asarray(slots))
    return tokens.tolist(), logprobs


def logits(rows: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_reports_raw_logprobs():
    x = logits(3)
    tokens, lps = sample(sampler_for(*[SamplingParams(temperature=0.0, logprobs=2)] * 3), x)
    assert tokens == x.argmax(-1).tolist()
    ref = x.log_softmax(-1)
    for row, (t, lp) in enumerate(zip(tokens, lps, strict=True)):
        assert lp.token_id == t and lp.rank == 1 and lp.logprob == pytest.approx(ref[row, t].item(), abs=1e-6)
        assert [tok for tok, _ in lp.top] == ref[row].topk(2).indices.tolist()


def test_rank_counts_strictly_better_tokens():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0] + [-10.0] * (V - 4)])
    tokens, lps = sample(sampler_for(SamplingParams(temperature=0.0, logit_bias={3: 5.0}, logprobs=0)), x)
    assert tokens == [3] and lps[0].rank == 3 and lps[0].top == []  # biased choice, raw rank: two tokens beat it


def test_sampled_frequencies_follow_the_distribution():
    x = torch.tensor([[2.0, 1.0, 0.0, -1.0] + [-30.0] * (V - 4)])
    sampler = sampler_for(SamplingParams(temperature=1.0))
    draws = torch.tensor([sample(sampler, x)[0][0] for _ in range(4000)])  # the stream advances per draw
    freq = torch.bincount(draws, minlength=V)[:4].float() / len(draws)
    assert torch.allclose(freq, x[0, :4].softmax(-1), atol=0.03)


def test_uniform_numbers_depend_on_seed_and_counter_only_and_are_uniform():
    streams = np.array([7, 7, 8], np.uint64)
    a = uniform(streams, np.array([0, 1, 0]))
    assert a[0] != a[1] and a[0] != a[2] and uniform(streams[:1], np.array([0]))[0] == a[0]
    u = uniform(np.full(20000, 12345, np.uint64), np.arange(20000))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01 and np.histogram(u, bins=10, range=(0, 1))[0].min() > 1800


def test_temperature_sharpens():
    x = torch.tensor([[1.0, 0.0] + [-30.0] * (V - 2)])
    cold_sampler, warm_sampler = sampler_for(SamplingParams(temperature=0.2)), sampler_for(
        SamplingParams(temperature=1.0))
    cold = sum(sample(cold_sampler, x)[0][0] == 0 for _ in range(500))
    warm = sum(sample(warm_sampler, x)[0][0] == 0 for _ in range(500))
    assert cold > 490 and 320 < warm < 410  # p(0) = 0.993 vs 0.731


def test_top_k_top_p_min_p_restrict_the_support():
    x = logits(1, seed=3)
    order = x[0].argsort(descending=True).tolist()
    probs = x[0].softmax(-1)

    def support(**kw):
        sampler = sampler_for(SamplingParams(temperature=1.0, **kw))
        return {sample(sampler, x)[0][0] for _ in range(300)}

    top3 = support(top_k=3)
    assert top3 <= set(order[:3]) and len(top3) > 1
    nucleus = set(order[: int((probs[order].cumsum(0) < 0.5).sum()) + 1])
    assert support(top_p=0.5) <= nucleus and len(nucleus) > 1 and len(support(top_p=0.5)) > 1
    near_best = {t for t in range(V) if probs[t] >= 0.5 * probs.max()}
    assert support(min_p=0.5) <= near_best and len(support(top_p=1.0, min_p=0.0)) > len(near_best)


def test_keep_top_p_matches_a_full_sort_also_when_the_candidates_fall_short():
    # near-flat rows put most of the mass outside the 256 candidates, so the sort fallback runs;
    # the reference is the smallest prefix of the sorted probabilities that reaches p
    gen = torch.Generator().manual_seed(5)
    x = torch.cat([torch.randn(2, 1000, generator=gen) * 0.3, torch.randn(2, 1000, generator=gen) * 3])
    for p in (0.1, 0.5, 0.95):
        out = keep_top_p(x, torch.full((4,), p))
        for row in range(4):
            sp = x[row].softmax(-1).sort(descending=True).values
            need = int((sp.cumsum(0) < p).sum()) + 1
            assert int(out[row].isfinite().sum()) == need


def test_keep_top_k_keeps_ties_and_caps_k_at_the_vocabulary():
    x = torch.tensor([[3.0, 2.0, 2.0, 1.0], [3.0, 2.0, 2.0, 1.0]])
    out = keep_top_k(x, torch.tensor([2, 9]))
    assert out[0].isfinite().tolist() == [True, True, True, False] and out[1].isfinite().all()


def test_penalties_and_logit_bias():
    x = torch.zeros(1, V)
    x[0, 5], x[0, 6] = 2.0, -2.0
    counts, seen = torch.zeros(1, V), torch.zeros(1, V, dtype=torch.bool)
    counts[0, 5], counts[0, 7] = 2, 1
    seen[0, [5, 6, 7]] = True
    one, zero = torch.ones(1), torch.zeros(1)
    y = apply_penalties(x, counts, seen, torch.full((1,), 2.0), zero, zero)[0]
    assert y[5] == 1.0 and y[6] == -4.0 and y[0] == 0.0
    y = apply_penalties(x, counts, seen, one, torch.full((1,), 0.5), one)[0]
    assert y[5].item() == pytest.approx(2.0 - 1.0 - 1.0) and y[7].item() == pytest.approx(-1.5) and y[6] == -2.0
    assert sample(sampler_for(SamplingParams(temperature=0.0, logit_bias={9: 100.0})), x)[0] == [9]
    # the penalties use each row's own history, kept per slot as tokens are sampled
    sampler = sampler_for(SamplingParams(temperature=0.0, presence_penalty=3.0), SamplingParams(temperature=0.0),
                          outputs={0: [5], 1: [5]})
    assert sample(sampler, x.repeat(2, 1))[0] == [0, 5]
    sampler = sampler_for(SamplingParams(temperature=0.0, frequency_penalty=1.5))
    assert [sample(sampler, x)[0][0] for _ in range(3)] == [5, 5, 0]  # 2.0 -> 0.5 -> -1.0 < 0.0


def test_min_tokens_holds_back_eos_and_stop_tokens():
    x = torch.zeros(1, V)
    x[0, EOS], x[0, 7], x[0, 8] = 10.0, 9.0, 8.0
    held = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[7])
    assert sample(sampler_for(held, outputs={0: [1]}), x)[0] == [8]
    assert sample(sampler_for(held, outputs={0: [1, 2]}), x)[0] == [EOS]
    sampler = sampler_for(held)  # counts its own draws
    assert [sample(sampler, x)[0][0] for _ in range(3)] == [8, 8, EOS]


def test_a_seeded_row_draws_the_same_alone_or_in_any_batch():
    x = logits(5, seed=4)
    seeded = SamplingParams(temperature=1.0, seed=7)
    alone = sampler_for(seeded)
    first = [sample(alone, x[2:3])[0][0] for _ in range(20)]
    batch = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.0), seeded, SamplingParams(top_k=3),
             SamplingParams(temperature=0.5, seed=1)]
    crowd = sampler_for(*batch)
    second = [sample(crowd, x)[0][2] for _ in range(20)]
    assert first == second and len(set(first)) > 1
    # in another slot too, with the rows in another order
    moved = Sampler(8, V, EOS)
    moved.add(5, seeded, 7, [1, 2, 3])
    moved.add(0, batch[0], 3, [1, 2, 3])
    third = [sample(moved, x[[0, 2]], slots=[0, 5])[0][1] for _ in range(20)]
    assert third == first


def test_rows_without_top_k_or_top_p_are_untouched_by_their_neighbours():
    """A default row draws the same whether or not other rows in the batch filter theirs."""
    x = logits(3, seed=6)
    plain = SamplingParams(temperature=1.0, seed=11)
    group = sampler_for(plain, SamplingParams(temperature=1.0, top_k=2), SamplingParams(temperature=1.0, top_p=0.3))
    single = sampler_for(plain)
    mixed = [sample(group, x)[0][0] for _ in range(31)]
    solo = [sample(single, x[:1])[0][0] for _ in range(31)]
    assert mixed == solo and len(set(solo)) > 1


def test_a_tiny_temperature_is_greedy():
    x = logits(2, seed=8)
    tokens, _ = sample(sampler_for(SamplingParams(temperature=1e-40), SamplingParams(temperature=1e-6)), x)
    assert tokens == x.argmax(-1).tolist()


def test_the_row_plan_is_kept_while_the_rows_stay_and_rebuilt_when_a_slot_changes_hands():
    x = logits(2, seed=9)
    sampler = sampler_for(SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_k=3))
    sample(sampler, x)
    (plan,) = sampler._plans.values()
    sample(sampler, x)
    assert list(sampler._plans.values()) == [plan]  # a steady step reuses it
    sampler.add(1, SamplingParams(temperature=0.0), 5, [1])
    assert sample(sampler, x)[0] == x.argmax(-1).tolist()
    (new,) = sampler._plans.values()
    assert new is not plan and new.all_greedy
