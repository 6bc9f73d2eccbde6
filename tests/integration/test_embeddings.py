"""POST /v1/embeddings on a real server: the official openai client works unmodified (base64 by
default), vectors equal transformers' pooled hidden states, batched equals alone, standardisation
uses the reference corpus's statistics (saved beside the model), bad input is a 400."""

import json
import shutil

import httpx
import pytest
import torch

from tests.conftest import TINY
from tests.integration.conftest import start_server

L = TINY["n_layer"]
TEXTS = ["The cat sat on the mat.", "A dog slept on the rug by the fire.", "Colourless green ideas sleep furiously.",
         "In the beginning God created the heaven and the earth."]


def hidden_states(hf_model, ids: list[int]) -> list[torch.Tensor]:
    """transformers' hidden states [L + 1] of [n, C], float64 (the last one after ln_f)."""
    with torch.no_grad():
        out = hf_model(torch.tensor([ids]), output_hidden_states=True)
    return [h[0].double() for h in out.hidden_states]


def pooled(hf_model, ids: list[int], pooling: str = "mean", layer: int = L) -> torch.Tensor:
    states = hidden_states(hf_model, ids)[layer]
    return states.mean(0) if pooling == "mean" else states[-1]


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def token_ids(http, text: str) -> list[int]:
    return http.post("/tokenize", json={"prompt": text}).json()["tokens"]


def test_the_openai_client_gets_transformers_mean_pooled_final_hidden_states(live, http, hf_model):
    client = live.client()
    response = client.embeddings.create(model="tiny-gpt2", input=TEXTS)  # the client asks for base64
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    assert response.model == "tiny-gpt2" and response.object == "list"
    ids = [token_ids(http, t) for t in TEXTS]
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(map(len, ids))
    for d, text_ids in zip(response.data, ids, strict=True):
        got = torch.tensor(d.embedding, dtype=torch.float64)
        assert got.shape == (TINY["n_embd"],) and got.norm().item() == pytest.approx(1.0, abs=1e-5)
        assert (got - unit(pooled(hf_model, text_ids))).abs().max() <= 1e-5  # float32 on the wire
    floats = client.embeddings.create(model="tiny-gpt2", input=TEXTS[0], encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(response.data[0].embedding, abs=1e-6)
    # token ids in, one list and several
    by_ids = client.embeddings.create(model="tiny-gpt2", input=ids[1], encoding_format="float")
    assert by_ids.data[0].embedding == pytest.approx(response.data[1].embedding, abs=1e-6)
    several = client.embeddings.create(model="tiny-gpt2", input=ids[:2])
    assert torch.allclose(torch.tensor([d.embedding for d in several.data]),
                          torch.tensor([d.embedding for d in response.data[:2]]), atol=1e-6)


@pytest.mark.parametrize("pooling, layer", [("last", None), ("mean", 0), ("last", 1), ("mean", -2)])
def test_pooling_and_layer_choices_match_transformers(live, http, hf_model, pooling, layer):
    response = live.client().embeddings.create(model="tiny-gpt2", input=TEXTS[:2],
                                               extra_body={"pooling": pooling, "layer": layer, "normalize": False})
    for d, text in zip(response.data, TEXTS[:2], strict=True):
        expected = pooled(hf_model, token_ids(http, text), pooling, L if layer is None else layer % (L + 1))
        assert (torch.tensor(d.embedding, dtype=torch.float64) - expected).abs().max() <= 1e-4


def test_batched_with_other_requests_equals_alone(live, http):
    import threading

    alone = [http.post("/v1/embeddings", json={"input": t}).json()["data"][0]["embedding"] for t in TEXTS]
    results = {}

    def embed_all():
        results["batched"] = http.post("/v1/embeddings", json={"input": TEXTS * 4}).json()

    thread = threading.Thread(target=embed_all)
    thread.start()  # beside a generation and a score call
    completion = http.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 30})
    scored = http.post("/v1/score", json={"input": TEXTS})
    thread.join(60)
    assert completion.status_code == scored.status_code == 200
    batched = [d["embedding"] for d in results["batched"]["data"]]
    for i, vector in enumerate(batched):
        assert vector == pytest.approx(alone[i % len(TEXTS)], abs=1e-5)


def test_usage_and_metrics_count_embedding_requests(live, http):
    def counters() -> tuple[float, float]:
        text = http.get("/metrics").text
        requests = prompt = 0.0
        for line in text.splitlines():
            if line.startswith('gpt2_requests_total{endpoint="/v1/embeddings",') and 'status="200"' in line:
                requests = float(line.split()[-1])
            elif line.startswith("gpt2_prompt_tokens_total "):
                prompt = float(line.split()[-1])
        return requests, prompt

    before = counters()
    body = http.post("/v1/embeddings", json={"input": TEXTS[:2]}).json()
    after = counters()
    assert after[0] == before[0] + 1
    assert after[1] >= before[1] + body["usage"]["prompt_tokens"]


@pytest.mark.parametrize("body, param, words", [
    ({"input": ""}, "input", "empty"),
    ({"input": ["a", ""]}, "input", "input 1"),
    ({"input": []}, "input", None),
    ({"input": [1, 2, 50257]}, "input", "vocabulary"),
    ({"input": list(range(1, 600))}, "input", "599 tokens"),
    ({"input": "a", "layer": L + 1}, "layer", f"[0, {L}]"),
    ({"input": "a", "layer": -(L + 2)}, "layer", None),
    ({"input": "a", "dimensions": 3}, "dimensions", str(TINY["n_embd"])),
    ({"input": "a", "standardize": True}, "standardize", "GPT2_EMBEDDING_REFERENCE"),
    ({"input": "a", "pooling": "max"}, "pooling", None),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format", None),
    ({"input": "a", "model": "gpt-4"}, "model", None),
])
def test_bad_input_is_400_naming_the_field(http, body, param, words):
    response = http.post("/v1/embeddings", json=body)
    assert response.status_code == (404 if param == "model" else 400), response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    if words:
        assert words in error["message"]


def test_standardised_embeddings_use_the_reference_corpus_saved_beside_the_model(tiny_model_dir, hf_model,
                                                                                  tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    reference = ["The sun rose over the hills.", "He walked to the market to buy bread.",
                 "Rain fell all night on the quiet town.", "She wrote a letter to her brother.",
                 "The ship sailed at dawn.", "Numbers can be added and multiplied."]
    (tmp_path / "reference.txt").write_text("\n".join(reference) + "\n")
    server = start_server(model=str(model), served_model_name="tiny-gpt2",
                          embedding_reference=str(tmp_path / "reference.txt"))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            standardised = http.post("/v1/embeddings", json={"input": TEXTS}).json()["data"]  # by default
            raw = http.post("/v1/embeddings", json={"input": TEXTS, "standardize": False}).json()["data"]
            ref = torch.stack([pooled(hf_model, token_ids(http, t)) for t in reference])
            mean, std = ref.mean(0), ref.std(0, unbiased=False)
            for got, plain, text in zip(standardised, raw, TEXTS, strict=True):
                vector = pooled(hf_model, token_ids(http, text))
                assert (torch.tensor(got["embedding"], dtype=torch.float64) - unit((vector - mean) / std)).abs().max() \
                    <= 1e-4
                assert (torch.tensor(plain["embedding"], dtype=torch.float64) - unit(vector)).abs().max() <= 1e-5
    finally:
        server.stop()
    saved = json.loads((model / "embedding-stats.json").read_text())
    assert saved["key"]["reference"]["pieces"] == len(reference)
    assert {(p, layer) for p, layer, _, _ in saved["statistics"]} == {
        (p, layer) for p in ("mean", "last") for layer in range(L + 1)}
    # the next start reads them (a changed file would be measured again: poison it to tell)
    poisoned = [[p, layer, [0.0] * len(mean), [1.0] * len(std)] for p, layer, mean, std in saved["statistics"]]
    (model / "embedding-stats.json").write_text(json.dumps({"key": saved["key"], "statistics": poisoned}))
    server = start_server(model=str(model), served_model_name="tiny-gpt2",
                          embedding_reference=str(tmp_path / "reference.txt"))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            got = http.post("/v1/embeddings", json={"input": TEXTS[0]}).json()["data"][0]["embedding"]
            assert got == pytest.approx(unit(pooled(hf_model, token_ids(http, TEXTS[0]))).tolist(), abs=1e-5)
    finally:
        server.stop()
