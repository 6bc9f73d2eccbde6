"""Every error a client can cause comes back in OpenAI's shape with the right status; never a 500."""

import re
import threading

import httpx
import pytest

from app.api.lifecycle import Phase
from tests.integration.conftest import start_server, wait_for

MODEL = "tiny-gpt2"


def assert_error(response: httpx.Response, status: int, param: str | None = None, text: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    assert text.lower() in error["message"].lower()
    return error


@pytest.mark.parametrize("body,param,text", [
    ({"prompt": "x", "temperature": 3}, "temperature", "less than or equal to 2"),
    ({"prompt": "x", "top_p": 0}, "top_p", "greater than 0"),
    ({"prompt": "x", "logprobs": 6}, "logprobs", "5"),
    ({"prompt": "x", "n": 0}, "n", "greater than or equal to 1"),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens", "greater than or equal to 0"),
    ({"prompt": "x", "max_tokens": "many"}, "max_tokens", "integer"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"prompt": "x", "logit_bias": {"hello": 1}}, "logit_bias", "token ids"),
    ({"prompt": "x", "logit_bias": {"50257": 1}}, "logit_bias", "outside the vocabulary"),
    ({"prompt": "x", "logit_bias": {"5": 500}}, "logit_bias", "[-100, 100]"),
    ({"prompt": "x", "logit_bias": {"\u00b2": 1}}, "logit_bias", "token ids"),
    ({"prompt": "x", "stop_token_ids": [60000]}, "stop_token_ids", "vocabulary"),
    ({"prompt": ["x"] * 70}, "prompt", "GPT2_MAX_QUEUE"),
    ({"prompt": ["x"] * 10, "n": 8}, "n", "GPT2_MAX_QUEUE"),
    ({"prompt": "x", "best_of": 3}, None, "best_of"),
    ({"prompt": "x", "max_tokens": 0}, None, "echo"),
    ({"prompt": "x", "min_tokens": 20, "max_tokens": 5}, None, "min_tokens"),
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": []}, "prompt", ""),
    ({"prompt": [[1, 2], []]}, "prompt", ""),
    ({"prompt": [50300]}, "prompt", "vocabulary"),
    ({"prompt": [-1]}, "prompt", ""),
    ({"prompt": {"text": "x"}}, "prompt", ""),
    ({}, "prompt", "required"),
    ({"prompt": "x", "model": 5}, "model", "string"),
])
def test_invalid_fields_are_400_naming_the_field(live, body, param, text):
    assert_error(live.http().post("/v1/completions", json={"model": MODEL, **body}), 400, param, text)


def test_a_prompt_too_long_says_the_counts(live):
    error = assert_error(live.http().post("/v1/completions", json={"prompt": [5] * 500, "max_tokens": 20}), 400,
                         "max_tokens")
    assert "500" in error["message"] and "512" in error["message"] and error["code"] == "context_length_exceeded"


def test_malformed_bodies_are_400(live):
    http = live.http()
    assert_error(http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}),
                 400, text="not valid JSON")
    assert_error(http.post("/v1/completions", content=b"[1, 2]", headers={"content-type": "application/json"}), 400)
    assert_error(http.post("/tokenize", json={"prompt": 5}), 400, "prompt")
    assert_error(http.post("/detokenize", json={"tokens": [99999]}), 400, "tokens", "vocabulary")


def test_unknown_model_is_404(live):
    error = assert_error(live.http().post("/v1/completions", json={"model": "gpt5", "prompt": "x"}), 404, "model")
    assert error["code"] == "model_not_found" and "tiny-gpt2" in error["message"]
    assert_error(live.http().post("/tokenize", json={"model": "gpt5", "prompt": "x"}), 404, "model")


def test_unknown_path_and_method_keep_the_shape(live):
    assert_error(live.http().get("/v1/nothing"), 404)
    assert_error(live.http().get("/v1/completions"), 405)


def test_an_oversized_body_is_413(live):
    big = {"prompt": "x" * (live.state.settings.max_request_bytes + 10)}
    error = assert_error(live.http().post("/v1/completions", json=big), 413, text="GPT2_MAX_REQUEST_BYTES")
    assert error["code"] == "body_too_large"

    def chunks():  # no Content-Length: the limit applies while reading
        yield b'{"prompt": "'
        for _ in range(live.state.settings.max_request_bytes // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    assert_error(live.http().post("/v1/completions", content=chunks(), headers={"content-type": "application/json"}),
                 413)


def test_draining_and_not_ready_are_503(live):
    lifecycle = live.state.lifecycle
    lifecycle.phase = Phase.DRAINING
    try:
        assert_error(live.http().post("/v1/completions", json={"prompt": "x"}), 503, text="shutting down")
        assert live.http().get("/readyz").status_code == 503
        assert live.http().get("/healthz").status_code == 200
    finally:
        lifecycle.phase = Phase.READY
    lifecycle.phase = Phase.LOADING
    try:
        error = assert_error(live.http().post("/v1/completions", json={"prompt": "x"}), 503, text="not ready")
        assert error["code"] == "not_ready"
        assert live.http().get("/readyz").json() == {"status": "loading"}
    finally:
        lifecycle.phase = Phase.READY
    assert live.http().get("/readyz").status_code == 200


def test_queue_full_is_429_with_retry_after(tiny_model_dir):
    server = start_server(model=tiny_model_dir, max_batch_size=1, max_queue=1, max_num_batched_tokens=64)
    long = {"prompt": "a", "max_tokens": 500, "ignore_eos": True, "stream": True}
    try:
        with server.http() as http, http.stream("POST", "/v1/completions", json=long) as running:
            lines = running.iter_lines()
            next(lines)  # the first runs (keep the iterator: dropping it would close the stream)
            done = []
            waiting = threading.Thread(target=lambda: done.append(server.http().post("/v1/completions", json={
                **long, "stream": False, "max_tokens": 5})))
            waiting.start()
            # the second waits in the queue
            wait_for(lambda: server.engine.last_stats is not None and server.engine.last_stats.num_waiting > 0)
            response = http.post("/v1/completions", json={"prompt": "b"})
            error = assert_error(response, 429, text="capacity")
            assert error["code"] == "queue_full" and int(response.headers["retry-after"]) >= 1
        waiting.join(30)
        assert done[0].status_code == 200  # the queued one was answered, not lost
    finally:
        server.stop()


def test_api_keys(tiny_model_dir):
    server = start_server(model=tiny_model_dir, api_keys="k1,k2")
    try:
        http = server.http()
        assert_error(http.post("/v1/completions", json={"prompt": "x"}), 401, text="API key")
        assert_error(http.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer k3"}), 401)
        assert_error(http.get("/v1/models", headers={"Authorization": "Basic k1"}), 401)
        assert http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                         headers={"Authorization": "Bearer k2"}).status_code == 200
        assert server.client(api_key="k1").models.list().data[0].id == server.state.service.info.name
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert http.get(open_path).status_code == 200, open_path
    finally:
        server.stop()


def test_request_ids_are_honoured_or_made(live):
    http = live.http()
    assert http.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).headers["x-request-id"]
    assert len(made) == 32
    junk = "bad id\twith junk"
    replaced = http.get("/healthz", headers={"X-Request-ID": junk}).headers["x-request-id"]
    assert replaced != junk and re.fullmatch(r"[0-9a-f]{32}", replaced)  # a new id, not the client's junk
    assert "x-request-id" in http.post("/v1/completions", json={"prompt": ""}).headers
