"""POST /v1/score with `explain` on a real server: attention weights and logit-lens probabilities
equal transformers' (output_attentions, output_hidden_states), for texts prefilled in several
chunks and batched with other inputs; the positions, costs and caps as docs/scoring.md says."""

import random

import httpx
import pytest
import torch

from tests.conftest import TINY
from tests.integration.conftest import score

TOL = 1e-4
L, H = TINY["n_layer"], TINY["n_head"]


def reference(hf_model, ids: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """transformers' attention weights [L] of [H, n, n], and the logit lens [L + 1] of [n, V] probabilities."""
    with torch.no_grad():
        out = hf_model(torch.tensor([ids]), output_attentions=True, output_hidden_states=True)
        ln_f, lm_head = hf_model.transformer.ln_f, hf_model.lm_head
        lens = [lm_head(h[0] if layer == L else ln_f(h[0])).softmax(-1) for layer, h in enumerate(out.hidden_states)]
    return [a[0] for a in out.attentions], lens


def check_position(entry: dict, ids: list[int], attentions, lens, attention_k: int, lens_k: int) -> None:
    p = entry["position"]
    assert len(entry["attention"]) == L and len(entry["lens"]) == L + 1
    for layer, got in enumerate(entry["attention"]):
        rows = attentions[layer][:, p, : p + 1]  # [H, p + 1]
        assert len(got["heads"]) == H
        for row, pairs in zip([*rows, rows.mean(0)], [*got["heads"], got["mean"]], strict=True):
            assert len(pairs) == min(attention_k, p + 1)
            weights = torch.tensor([w for _, w in pairs])
            assert (weights - row.topk(len(pairs)).values).abs().max() <= TOL  # transformers' largest weights
            assert all(abs(row[key] - w) <= TOL for key, w in pairs)  # at the positions named
    for layer, got in enumerate(entry["lens"]):
        expected = lens[layer][p].topk(lens_k)
        assert [t["token_id"] for t in got["top"]] == expected.indices.tolist()
        assert [t["prob"] for t in got["top"]] == pytest.approx(expected.values.tolist(), abs=TOL)
        if p + 1 < len(ids):
            assert got["next_token_prob"] == pytest.approx(lens[layer][p, ids[p + 1]].item(), abs=TOL)
        else:
            assert got["next_token_prob"] is None
    top1 = [int(lens[layer][p].argmax()) for layer in range(L + 1)]
    assert entry["first_top1_layer"] == top1.index(top1[-1])
    assert entry["settled_layer"] == min(layer for layer in range(L + 1) if set(top1[layer:]) == {top1[-1]})


def test_explain_equals_transformers_whole_rows_chunked_and_batched(http, live, hf_model):
    rng = random.Random(0)
    # 300 tokens: two prefill chunks at the test server's 256 tokens per step, batched with two others
    long = [rng.randrange(50257) for _ in range(300)]
    inputs = [long, [rng.randrange(50257) for _ in range(12)], [464, 3797]]
    body = {"input": inputs, "top_logprobs": 2, "explain": {"attention_top_k": 1024, "lens_top_k": 3}}
    data = score(http, **body)["data"]
    for ids, result in zip(inputs, data, strict=True):
        attentions, lens = reference(hf_model, ids)
        explanation = result["explanation"]
        assert explanation["num_layers"] == L and explanation["num_heads"] == H
        assert [e["position"] for e in explanation["positions"]] == list(range(len(ids)))  # every position
        for entry in explanation["positions"][:: 7 if len(ids) > 100 else 1] + explanation["positions"][-1:]:
            check_position(entry, ids, attentions, lens, 1024, 3)
            assert sum(w for _, w in entry["attention"][0]["mean"]) == pytest.approx(1.0, abs=TOL)  # whole rows
        assert result["token_logprobs"][1:] == pytest.approx(  # the scores are those without explain (within
            score(http, input=ids, top_logprobs=2)["data"][0]["token_logprobs"][1:], abs=TOL)  # rounding: the lens'
        # cost in the step's budget chunks an explained prompt differently)


def test_explain_top_k_and_chosen_positions_with_a_context(http, hf_model):
    context, text = "The cat sat on the", " mat and looked at the door."
    ids = score(http, context=context, input=text)["data"][0]
    num_context = ids["num_context_tokens"]
    token_ids = http.post("/tokenize", json={"prompt": context}).json()["tokens"] + ids["token_ids"]
    attentions, lens = reference(hf_model, token_ids)
    # default positions: from the one that predicts the first scored token (the context's last) to the end
    result = score(http, context=context, input=text, explain={"attention_top_k": 2, "lens_top_k": 1})["data"][0]
    positions = result["explanation"]["positions"]
    assert [e["position"] for e in positions] == list(range(num_context - 1, len(token_ids)))
    assert [e["token"] for e in positions[1:]] == ids["tokens"]
    for entry in positions:
        check_position(entry, token_ids, attentions, lens, 2, 1)
    # chosen positions, sorted and deduplicated; attention only
    result = score(http, context=context, input=text, explain={"positions": [7, 0, 7], "lens_top_k": 0})["data"][0]
    assert [e["position"] for e in result["explanation"]["positions"]] == [0, 7]
    assert all(e["lens"] is None and e["first_top1_layer"] is None for e in result["explanation"]["positions"])
    assert len(result["explanation"]["positions"][0]["attention"][0]["mean"]) == 1  # position 0 sees itself only


def test_without_explain_there_is_no_explanation(http):
    assert score(http, input="Hello there")["data"][0]["explanation"] is None


@pytest.mark.parametrize("body, param, words", [
    ({"input": "a b c", "explain": {"attention_top_k": 0, "lens_top_k": 0}}, "explain", "asks for nothing"),
    ({"input": "a b c", "explain": {"attention_topk": 3}}, "explain.attention_topk", None),
    ({"input": "a b c", "explain": {"positions": [3]}}, "explain.positions", "numbered 0 to 2"),
    ({"input": "a b c", "explain": {"positions": [-1]}}, "explain.positions", "greater than or equal to 0"),
    ({"input": "a b c", "explain": {"lens_top_k": 21}}, "explain.lens_top_k", None),
    ({"input": list(range(1, 600)), "window": "sliding", "explain": {}}, "explain", "one window"),
    ({"input": ["a b"] * 3, "explain": {"positions": list(range(500))}}, "explain.positions", "input 0"),
])
def test_bad_explain_is_400_naming_the_field(http, body, param, words):
    response = http.post("/v1/score", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    if words:
        assert words in error["message"]


def test_explain_is_capped_by_positions_and_response_entries(live):
    from tests.integration.conftest import start_server

    server = start_server(model=live.state.settings.model, max_explain_positions=20, max_response_entries=2000)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            response = http.post("/v1/score", json={"input": ["one two three four five six seven"] * 3,
                                                    "explain": {"lens_top_k": 1}})
            error = response.json()["error"]
            assert response.status_code == 400 and error["param"] == "explain"
            assert "21 positions" in error["message"] and "GPT2_MAX_EXPLAIN_POSITIONS" in error["message"]
            # 20 positions, whole rows: (1 + ... + 20) x 2 layers x 5 rows + the lens's 20 x 3 x 6 > 2000
            response = http.post("/v1/score", json={"input": list(range(1, 21)), "explain": {"attention_top_k": 50}})
            error = response.json()["error"]
            assert response.status_code == 400 and "GPT2_MAX_RESPONSE_ENTRIES" in error["message"]
            assert score(http, input="one two three", explain={"attention_top_k": 1, "lens_top_k": 1})["data"]
    finally:
        server.stop()
