"""What the routes answer is what /openapi.json says they answer: each route's 200 body, with every
optional part asked for, validated against the schema the app publishes, made strict here (no key
the schema does not name). The response models are the one source of both (score_schemas.py,
schemas.py, embedding_schemas.py); this test keeps the JSON built from them and the schema together."""

import copy

import httpx
import jsonschema
import pytest

REQUESTS = [
    ("/v1/score", {"input": ["The cat sat on the mat.", "A second text"], "return_tokens": True, "top_logprobs": 2,
                   "detect": True, "explain": {"attention_top_k": 2, "lens_top_k": 2}}),
    ("/v1/score", {"input": "is the answer", "context": "The capital of France", "detect": False}),
    ("/v1/score", {"input": "word " * 700, "window": "sliding", "stride": 256}),  # the tiny model holds 512
    ("/v1/completions", {"prompt": ["Hello", "Bye"], "max_tokens": 3, "n": 2, "echo": True, "logprobs": 2,
                         "temperature": 0}),
    ("/v1/completions", {"prompt": "Hello", "max_tokens": 2}),
    ("/v1/embeddings", {"input": ["one text", "another"]}),
    ("/v1/embeddings", {"input": "one text", "encoding_format": "base64"}),
    ("/tokenize", {"prompt": "Hello world"}),
    ("/detokenize", {"tokens": [15496, 995]}),
]


def strict(schema: dict) -> dict:
    """The schema with `additionalProperties: false` on every object that lists its properties."""
    schema = copy.deepcopy(schema)

    def visit(node) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


@pytest.fixture(scope="module")
def openapi(live) -> dict:
    return strict(httpx.get(f"{live.url}/openapi.json", timeout=30).json())


def validator(openapi: dict, path: str) -> jsonschema.Draft202012Validator:
    schema = openapi["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": openapi["components"]})


@pytest.mark.parametrize(("path", "body"), REQUESTS, ids=[f"{p} {i}" for i, (p, _) in enumerate(REQUESTS)])
def test_each_answer_matches_the_published_schema(live, openapi, path, body):
    response = httpx.post(f"{live.url}{path}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
              for e in validator(openapi, path).iter_errors(response.json())]
    assert errors == []


def test_the_check_would_catch_a_drift(live, openapi):
    answer = httpx.post(f"{live.url}/v1/score", json={"input": "a text"}, timeout=60).json()
    check = validator(openapi, "/v1/score")
    assert check.is_valid(answer)
    assert not check.is_valid({**answer, "unexpected": 1})
    drifted = copy.deepcopy(answer)
    drifted["data"][0]["num_tokens"] = "three"
    assert not check.is_valid(drifted)
    drifted = copy.deepcopy(answer)
    del drifted["data"][0]["perplexity"]
    assert not check.is_valid(drifted)
