"""Sampling on hand-made logits: each knob does what it says, draws follow the distribution,
and a seeded row draws the same whatever else is in the batch."""

import pytest
import torch

from app.engine.sequence import SamplingParams, Sequence
from app.model.sampling import Sampler, keep_top_k, keep_top_p

V = 50
EOS = V - 1


def seqs(*params: SamplingParams, outputs=None) -> list[Sequence]:
    out = []
    for i, p in enumerate(params):
        s = Sequence(f"r{i}", [1, 2, 3], p)
        s.output_token_ids = list((outputs or {}).get(i, []))
        if p.seed is not None:  # as Engine.add_request does
            s.generator = torch.Generator().manual_seed(p.seed)
        out.append(s)
    return out


def logits(rows: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_reports_raw_logprobs():
    x = logits(3)
    tokens, lps = Sampler(EOS).sample(x, seqs(*[SamplingParams(temperature=0.0, logprobs=2)] * 3))
    assert tokens == x.argmax(-1).tolist()
    ref = x.log_softmax(-1)
    for row, (t, lp) in enumerate(zip(tokens, lps, strict=True)):
        assert lp.token_id == t and lp.rank == 1 and lp.logprob == pytest.approx(ref[row, t].item(), abs=1e-6)
        assert [tok for tok, _ in lp.top] == ref[row].topk(2).indices.tolist()


def test_rank_counts_strictly_better_tokens():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0] + [-10.0] * (V - 4)])
    sampler = Sampler(EOS)
    tokens, lps = sampler.sample(x, seqs(SamplingParams(temperature=0.0, logit_bias={3: 5.0}, logprobs=0)))
    assert tokens == [3] and lps[0].rank == 3 and lps[0].top == []  # biased choice, raw rank: two tokens beat it


def test_sampled_frequencies_follow_the_distribution():
    x = torch.tensor([[2.0, 1.0, 0.0, -1.0] + [-30.0] * (V - 4)])
    sampler = Sampler(EOS, seed=1)
    params = SamplingParams(temperature=1.0)
    draws = torch.tensor([sampler.sample(x, seqs(params))[0][0] for _ in range(4000)])
    freq = torch.bincount(draws, minlength=V)[:4].float() / len(draws)
    assert torch.allclose(freq, x[0, :4].softmax(-1), atol=0.03)


def test_temperature_sharpens():
    x = torch.tensor([[1.0, 0.0] + [-30.0] * (V - 2)])
    sampler = Sampler(EOS, seed=2)
    cold = sum(sampler.sample(x, seqs(SamplingParams(temperature=0.2)))[0][0] == 0 for _ in range(500))
    warm = sum(sampler.sample(x, seqs(SamplingParams(temperature=1.0)))[0][0] == 0 for _ in range(500))
    assert cold > 490 and 320 < warm < 410  # p(0) = 0.993 vs 0.731


def test_top_k_top_p_min_p_restrict_the_support():
    x = logits(1, seed=3)
    order = x[0].argsort(descending=True).tolist()
    probs = x[0].softmax(-1)
    sampler = Sampler(EOS, seed=3)

    def support(**kw):
        return {sampler.sample(x, seqs(SamplingParams(temperature=1.0, **kw)))[0][0] for _ in range(300)}

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
        out = keep_top_p(x, [p] * 4)
        for row in range(4):
            sp = x[row].softmax(-1).sort(descending=True).values
            need = int((sp.cumsum(0) < p).sum()) + 1
            assert int(out[row].isfinite().sum()) == need


def test_keep_top_k_keeps_ties_and_caps_k_at_the_vocabulary():
    x = torch.tensor([[3.0, 2.0, 2.0, 1.0], [3.0, 2.0, 2.0, 1.0]])
    out = keep_top_k(x, [2, 9])
    assert out[0].isfinite().tolist() == [True, True, True, False] and out[1].isfinite().all()


def test_penalties_and_logit_bias():
    x = torch.zeros(1, V)
    x[0, 5] = 2.0
    x[0, 6] = -2.0
    sampler = Sampler(EOS)
    s = seqs(SamplingParams(temperature=0.0, repetition_penalty=2.0), outputs={0: [5, 6]})
    assert sampler._process(x, s)[0, 5] == 1.0 and sampler._process(x, s)[0, 6] == -4.0
    s = seqs(SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=1.0), outputs={0: [5, 5, 7]})
    y = sampler._process(x, s)[0]
    assert y[5].item() == pytest.approx(2.0 - 1.0 - 1.0) and y[7].item() == pytest.approx(-1.5) and y[6] == -2.0
    s = seqs(SamplingParams(temperature=0.0, logit_bias={9: 100.0}))
    assert sampler.sample(x, s)[0] == [9]
    # the penalties use each row's own history
    s = seqs(SamplingParams(temperature=0.0, presence_penalty=3.0), SamplingParams(temperature=0.0),
             outputs={0: [5], 1: [5]})
    assert sampler.sample(x.repeat(2, 1), s)[0] == [0, 5]


def test_min_tokens_holds_back_eos_and_stop_tokens():
    x = torch.zeros(1, V)
    x[0, EOS] = 10.0
    x[0, 7] = 9.0
    x[0, 8] = 8.0
    sampler = Sampler(EOS)
    held = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[7])
    assert sampler.sample(x, seqs(held, outputs={0: [1]}))[0] == [8]
    assert sampler.sample(x, seqs(held, outputs={0: [1, 2]}))[0] == [EOS]


def test_a_seeded_row_draws_the_same_alone_or_in_any_batch():
    x = logits(5, seed=4)
    seeded = SamplingParams(temperature=1.0, seed=7)
    alone = Sampler(EOS, seed=0)
    single = seqs(seeded)
    first = [alone.sample(x[2:3], single)[0][0] for _ in range(20)]
    crowd = Sampler(EOS, seed=99)
    batch = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.0), seeded, SamplingParams(top_k=3),
             SamplingParams(temperature=0.5, seed=1)]
    group = seqs(*batch)
    second = [crowd.sample(x, group)[0][2] for _ in range(20)]
    assert first == second and len(set(first)) > 1


def test_rows_without_top_k_or_top_p_are_untouched_by_their_neighbours():
    """A default row draws the same whether or not other rows in the batch filter theirs."""
    x = logits(3, seed=6)
    plain = SamplingParams(temperature=1.0, seed=11)
    group = seqs(plain, SamplingParams(temperature=1.0, top_k=2), SamplingParams(temperature=1.0, top_p=0.3))
    single = seqs(plain)
    mixed = [Sampler(EOS).sample(x, group)[0][0] for _ in range(31)]
    solo = [Sampler(EOS).sample(x[:1], single)[0][0] for _ in range(31)]
    assert mixed == solo and len(set(solo)) > 1


def test_a_tiny_temperature_is_greedy():
    x = logits(2, seed=8)
    tokens, _ = Sampler(EOS).sample(x, seqs(SamplingParams(temperature=1e-40), SamplingParams(temperature=1e-6)))
    assert tokens == x.argmax(-1).tolist()
