"""Reading the hidden states in the engine (explain, embed) equals transformers' own
output_attentions / output_hidden_states, for prompts prefilled in several chunks and batched with
other requests (generation included)."""

import random
import time

import pytest
import torch

from app.config import Settings
from app.engine.process import build_core
from app.engine.protocol import EmbedParams, EngineRequest, ExplainParams, SamplingParams
from app.engine.readout import reference_statistics
from tests.conftest import TINY

TOL = 1e-4
L, H = TINY["n_layer"], TINY["n_head"]


@pytest.fixture(scope="module")
def core(tiny_model_dir):
    # 64 tokens per step: a 150-token prompt is prefilled in three chunks, beside the others
    core, _ = build_core(Settings(model=tiny_model_dir, max_batch_size=8, max_num_batched_tokens=64))
    return core


def run(core, requests: list[tuple[str, list[int], SamplingParams]]) -> dict:
    """Add all, step until done; the last output of each request."""
    for rid, prompt, params in requests:
        core.add(EngineRequest(rid, prompt, params, time.monotonic()))
    last = {}
    for _ in range(10000):
        if not core.has_unfinished():
            return last
        for out in core.step()[0]:
            if out.finished:
                last[out.request_id] = out
    raise AssertionError("the engine did not finish")


def reference(hf_model, prompt: list[int]):
    """transformers' attentions [L][H, n, n] and each layer's logit-lens log-probabilities [L + 1][n, V]."""
    with torch.no_grad():
        out = hf_model(torch.tensor([prompt]), output_attentions=True, output_hidden_states=True)
        lm_head, ln_f = hf_model.lm_head, hf_model.transformer.ln_f
        states = out.hidden_states  # [L + 1] of [1, n, C]; the last one is after ln_f already
        lens = [lm_head(ln_f(h[0]) if i < L else h[0]).log_softmax(-1) for i, h in enumerate(states)]
    return [a[0] for a in out.attentions], lens, [h[0] for h in states]


def prompts(seed: int, lengths: tuple[int, ...]) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(50257) for _ in range(n)] for n in lengths]


def test_explained_attention_and_logit_lens_equal_transformers_chunked_and_batched(core, hf_model):
    long, short, tiny = prompts(0, (150, 40, 3))
    whole = ExplainParams(positions=list(range(150)), attention_top_k=512, lens_top_k=5)  # whole rows
    requests = [("long", long, SamplingParams(max_tokens=0, explain=whole)),
                ("generating", short, SamplingParams(max_tokens=20, temperature=0.0)),
                ("some", short, SamplingParams(max_tokens=0, prompt_logprobs=0,
                                               explain=ExplainParams([0, 17, 39], attention_top_k=3, lens_top_k=2))),
                ("tiny", tiny, SamplingParams(max_tokens=0, explain=ExplainParams([0, 1, 2], 512, 1)))]
    outputs = run(core, requests)
    assert outputs["generating"].readout is None
    assert len(outputs["some"].prompt_scores.token_logprobs) == 39  # scoring still works beside explain
    for rid, prompt, params in [requests[0], requests[2], requests[3]]:
        attentions, lens, _ = reference(hf_model, prompt)
        explained = outputs[rid].readout.explanation
        assert [e.position for e in explained] == params.explain.positions
        for e in explained:
            p, k = e.position, min(params.explain.attention_top_k, e.position + 1)
            keys = torch.tensor(e.attention_keys).view(L, H + 1, k)
            weights = torch.tensor(e.attention_weights).view(L, H + 1, k)
            for layer in range(L):
                rows = torch.cat([attentions[layer][:, p, : p + 1], attentions[layer][:, p, : p + 1].mean(0, True)])
                expected = rows.topk(k, -1)  # [H + 1, k]: each head's, then the heads' mean
                assert (weights[layer] - expected.values).abs().max() <= TOL
                assert (keys[layer] <= p).all() and (weights[layer].diff(dim=-1) <= 0).all()  # largest first
                # the positions named carry the weights given (ties aside, they are transformers' top k)
                assert (rows.gather(1, keys[layer]) - weights[layer]).abs().max() <= TOL
                if k == p + 1:  # whole rows: they sum to 1
                    assert torch.allclose(weights[layer].sum(-1), torch.ones(H + 1), atol=TOL)
            lens_k = params.explain.lens_top_k
            ids = torch.tensor(e.lens_token_ids).view(L + 1, lens_k)
            probs = torch.tensor(e.lens_probs).view(L + 1, lens_k)
            for layer in range(L + 1):
                expected = lens[layer][p].exp().topk(lens_k)
                assert (probs[layer] - expected.values).abs().max() <= TOL
                assert ids[layer].tolist() == expected.indices.tolist()
            if p + 1 < len(prompt):
                expected_next = torch.stack([lens[layer][p, prompt[p + 1]].exp() for layer in range(L + 1)])
                assert (torch.tensor(e.lens_next_probs) - expected_next).abs().max() <= TOL
            else:
                assert e.lens_next_probs == []


def test_attention_only_and_lens_only(core, hf_model):
    (prompt,) = prompts(1, (30,))
    outputs = run(core, [("attention", prompt, SamplingParams(max_tokens=0, explain=ExplainParams([29], 4, 0))),
                         ("lens", prompt, SamplingParams(max_tokens=0, explain=ExplainParams([29], 0, 3)))])
    attention, lens = outputs["attention"].readout.explanation[0], outputs["lens"].readout.explanation[0]
    assert len(attention.attention_keys) == L * (H + 1) * 4 and not attention.lens_token_ids
    assert not lens.attention_keys and len(lens.lens_token_ids) == (L + 1) * 3 and lens.lens_next_probs == []


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_embeddings_pool_transformers_hidden_states_at_every_layer(core, hf_model, pooling):
    texts = prompts(2, (150, 9, 1, 64))
    layers = list(range(L + 1))
    raw = EmbedParams(layers=layers, pooling=[pooling], normalize=False)
    unit = EmbedParams(layers=[L], pooling=[pooling])
    requests = [(f"raw{i}", t, SamplingParams(max_tokens=0, embed=raw)) for i, t in enumerate(texts)]
    requests += [(f"unit{i}", t, SamplingParams(max_tokens=0, embed=unit)) for i, t in enumerate(texts)]
    requests.append(("generating", texts[1], SamplingParams(max_tokens=30, temperature=0.0)))
    outputs = run(core, requests)
    for i, text in enumerate(texts):
        _, _, states = reference(hf_model, text)
        expected = [(s.mean(0) if pooling == "mean" else s[-1]).double() for s in states]
        got = torch.tensor(outputs[f"raw{i}"].readout.embeddings, dtype=torch.float64)  # [L + 1, C]
        assert got.shape == (L + 1, TINY["n_embd"])
        assert (got - torch.stack(expected)).abs().max() <= TOL
        (normalised,) = outputs[f"unit{i}"].readout.embeddings
        assert torch.allclose(torch.tensor(normalised, dtype=torch.float64),
                              expected[L] / expected[L].norm(), atol=1e-6)


def test_standardised_embeddings_use_the_reference_corpus_mean_and_std(core, hf_model):
    reference_texts = prompts(3, (20, 33, 50, 7, 90))
    stats = reference_statistics(core, reference_texts)
    assert set(stats) == {(p, layer) for p in ("mean", "last") for layer in range(L + 1)}
    pooled = torch.stack([reference(hf_model, t)[2][1].mean(0).double() for t in reference_texts])  # layer 1, mean
    mean, std = stats[("mean", 1)]
    assert (mean - pooled.mean(0)).abs().max() <= TOL
    assert (std - pooled.std(0, unbiased=False)).abs().max() <= TOL
    core.runner.reader.stats = stats
    try:
        (text,) = prompts(4, (25,))
        params = SamplingParams(max_tokens=0, embed=EmbedParams(layers=[1], standardize=True, normalize=False))
        (vector,) = run(core, [("std", text, params)])["std"].readout.embeddings
        expected = (reference(hf_model, text)[2][1].mean(0).double() - mean) / std
        assert (torch.tensor(vector, dtype=torch.float64) - expected).abs().max() <= 1e-3  # divided by small stds
    finally:
        core.runner.reader.stats = None


@pytest.mark.parametrize("params, param", [
    (SamplingParams(max_tokens=0, explain=ExplainParams([0, 5], 1, 1)), "explain"),  # past the prompt
    (SamplingParams(max_tokens=0, explain=ExplainParams([2, 1], 1, 1)), "explain"),  # not ascending
    (SamplingParams(max_tokens=0, explain=ExplainParams([1, 1], 1, 1)), "explain"),  # not distinct
    (SamplingParams(max_tokens=0, embed=EmbedParams(layers=[L + 1])), "layer"),
    (SamplingParams(max_tokens=0, embed=EmbedParams(layers=[0], pooling=["max"])), "pooling"),
    (SamplingParams(max_tokens=0, embed=EmbedParams(layers=[0], standardize=True)), "standardize"),
])
def test_the_engine_door_refuses_readouts_it_cannot_run(params, param):
    from app.engine.protocol import EngineInfo
    from app.engine.validation import InvalidRequestError, validate_sequence

    info = EngineInfo("m", "m", "cpu", "float32", "auto", 512, 1, 50257, None, 8, "", 0.0, 0.0, num_layers=L,
                      num_heads=H, hidden_size=TINY["n_embd"])
    validate_sequence([1, 2, 3], SamplingParams(max_tokens=0, explain=ExplainParams([0, 2], 1, 1)), info)  # fine
    with pytest.raises(InvalidRequestError) as refused:
        validate_sequence([1, 2, 3], params, info)
    assert refused.value.param == param
