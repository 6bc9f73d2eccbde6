"""/v1/completions through a real server, driven by the official openai client and httpx."""

import asyncio
import json
import time

import pytest
import torch
from openai import AsyncOpenAI

from tests.integration.conftest import wait_for

MODEL = "tiny-gpt2"
CJK_EMOJI = [33768, 98, 17312, 105, 45739, 252, 12520, 97, 245]  # "日本語 🤗", partial-byte tokens


def sse_events(response) -> list[dict | str]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_completion_with_the_openai_client(live):
    out = live.client().completions.create(model=MODEL, prompt="Hello, my name is", max_tokens=12, temperature=0)
    choice = out.choices[0]
    assert out.object == "text_completion" and out.model == MODEL and choice.index == 0
    assert choice.finish_reason in ("stop", "length") and choice.logprobs is None
    assert out.usage.prompt_tokens == 5 and out.usage.total_tokens == 5 + out.usage.completion_tokens
    assert 1 <= out.usage.completion_tokens <= 12


def test_lists_of_prompts_token_ids_and_n_are_indexed_like_openai(live):
    client = live.client()
    out = client.completions.create(model=MODEL, prompt=["One", "Two three"], n=3, max_tokens=4, temperature=0.9,
                                    seed=5, extra_body={"ignore_eos": True})
    assert [c.index for c in out.choices] == list(range(6))
    assert out.usage.prompt_tokens == 1 + 2 and out.usage.completion_tokens == 6 * 4
    assert len({c.text for c in out.choices[:3]}) > 1  # n choices differ (seeds differ per choice)
    again = client.completions.create(model=MODEL, prompt=["One", "Two three"], n=3, max_tokens=4, temperature=0.9,
                                      seed=5, extra_body={"ignore_eos": True})
    assert [c.text for c in again.choices] == [c.text for c in out.choices]  # and the seed reproduces them
    ids = live.http().post("/tokenize", json={"prompt": "Two three"}).json()["tokens"]
    by_ids = client.completions.create(model=MODEL, prompt=[[15496], ids], max_tokens=4, temperature=0)
    by_text = client.completions.create(model=MODEL, prompt=["Hello", "Two three"], max_tokens=4, temperature=0)
    assert [c.text for c in by_ids.choices] == [c.text for c in by_text.choices]
    single = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    assert single.choices[0].text == by_text.choices[1].text


def test_logprobs_and_echo(live, hf_model):
    out = live.client().completions.create(model=MODEL, prompt="The cat sat", max_tokens=5, temperature=0,
                                           logprobs=3, echo=True)
    lp = out.choices[0].logprobs
    prompt_ids = [464, 3797, 3332]
    assert out.choices[0].text.startswith("The cat sat")
    assert lp.tokens[:3] == ["The", " cat", " sat"] and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset[:4] == [0, 3, 7, 11]
    assert len(lp.tokens) == 3 + out.usage.completion_tokens
    # the 3 best alternatives, plus the token itself when it is not among them (as OpenAI does)
    pairs = zip(lp.tokens[1:], lp.top_logprobs[1:], strict=True)
    assert all(3 <= len(top) <= 4 and token in top for token, top in pairs)
    assert any(len(top) == 4 for top in lp.top_logprobs[1:3])  # random prompt tokens are rarely in the top 3
    with torch.no_grad():
        ref = hf_model(torch.tensor([prompt_ids])).logits[0].log_softmax(-1)
    for i in (1, 2):
        assert lp.token_logprobs[i] == pytest.approx(ref[i - 1, prompt_ids[i]].item(), abs=1e-4)
    # greedy: each generated token is its position's best alternative
    for token, top in zip(lp.tokens[3:], lp.top_logprobs[3:], strict=True):
        assert max(top, key=top.get) == token


def test_lm_evaluation_harness_loglikelihood_contract(live, hf_model):
    """prompt = token-id lists, echo, logprobs=1, max_tokens=1, temperature=0 (lm-eval's local-completions)."""
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in (2, 9, 40)]
    out = live.client().completions.create(model=MODEL, prompt=prompts, echo=True, logprobs=1, max_tokens=1,
                                           temperature=0)
    tok = live.state.service.tokenizer
    for ids, choice in zip(prompts, out.choices, strict=True):
        lp = choice.logprobs
        assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 1
        with torch.no_grad():
            ref = hf_model(torch.tensor([ids])).logits[0].log_softmax(-1)
        for i in range(1, len(ids)):
            assert lp.token_logprobs[i] == pytest.approx(ref[i - 1, ids[i]].item(), abs=1e-4)
            top_token = max(lp.top_logprobs[i], key=lp.top_logprobs[i].get)
            assert top_token == tok.token_str(int(ref[i - 1].argmax()))  # the greedy token
            is_greedy = ids[i] == int(ref[i - 1].argmax())
            assert (top_token == lp.tokens[i]) == is_greedy


def test_max_tokens_zero_scores_the_prompt_only(live):
    out = live.client().completions.create(model=MODEL, prompt="Just score me", max_tokens=0, echo=True, logprobs=0)
    assert out.choices[0].text == "Just score me" and out.usage.completion_tokens == 0
    assert out.choices[0].finish_reason == "length" and len(out.choices[0].logprobs.tokens) == 3


@pytest.mark.parametrize("prompt", ["Hello there", "日本語 🤗 emoji"])
def test_streamed_text_equals_the_whole_text(live, prompt):
    # a strong bias towards partial-byte tokens makes the model write CJK/emoji byte soup
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 40, "temperature": 1.0, "seed": 3, "logprobs": 1,
            "logit_bias": {str(t): 8.0 for t in CJK_EMOJI}, "ignore_eos": True}
    whole = live.http().post("/v1/completions", json=body).json()
    with live.http().stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert streamed == whole["choices"][0]["text"]
    assert any(ord(ch) > 0x2E80 for ch in streamed)  # CJK or emoji really came out
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    tokens = [t for c in chunks for t in c["choices"][0]["logprobs"]["tokens"]]
    assert tokens == whole["choices"][0]["logprobs"]["tokens"]


def test_stream_options_include_usage(live):
    body = {"model": MODEL, "prompt": ["a", "b c"], "n": 2, "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    with live.http().stream("POST", "/v1/completions", json=body) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 20,
                                                                      "total_tokens": 23,
                                                                      "prompt_tokens_details": {"cached_tokens": 0}}
    finished = [c["choices"][0]["index"] for c in events[:-2] if c["choices"][0]["finish_reason"]]
    assert sorted(finished) == [0, 1, 2, 3] and all(c["usage"] is None for c in events[:-2])


def test_stop_strings_across_token_boundaries(live):
    client = live.client()
    base = client.completions.create(model=MODEL, prompt="Tell me", max_tokens=30, temperature=0, logprobs=0,
                                     extra_body={"ignore_eos": True})
    text, offsets = base.choices[0].text, base.choices[0].logprobs.text_offset
    cut = offsets[6]  # a stop string spanning the boundary between tokens 5 and 6
    stop = text[cut - 2 : cut + 2]
    assert len(stop) == 4 and stop not in text[: cut - 2]
    out = client.completions.create(model=MODEL, prompt="Tell me", max_tokens=30, temperature=0, stop=[stop, "zzz"],
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].text == text[: cut - 2] and out.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Tell me", max_tokens=30, temperature=0, stop=stop, stream=True,
        extra_body={"ignore_eos": True}))
    assert streamed == text[: cut - 2]
    wait_for(lambda: live.engine.last_stats.num_running == 0)  # the stopped sequence's slot was freed


def test_thirty_two_concurrent_greedy_requests_match_each_alone(live):
    prompts = [f"Request number {i} says" + " hi" * (i % 7) for i in range(32)]

    async def run(batch: list[str]) -> list[str]:
        client = AsyncOpenAI(base_url=f"{live.url}/v1", api_key="none", max_retries=0)
        outs = await asyncio.gather(*(client.completions.create(model=MODEL, prompt=p, max_tokens=10 + i % 13,
                                                                temperature=0) for i, p in enumerate(batch)))
        await client.close()
        return [o.choices[0].text for o in outs]

    together = asyncio.run(run(prompts))
    client = live.client()
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=10 + i % 13, temperature=0).choices[0].text
             for i, p in enumerate(prompts)]
    assert together == alone


def test_a_disconnected_stream_is_aborted_within_a_step_or_two(live):
    body = {"model": MODEL, "prompt": "Go on", "max_tokens": 400, "stream": True, "ignore_eos": True}
    engine = live.engine
    aborted = []
    engine.request_listeners.append(lambda stats: aborted.append(stats.finish_reason))
    try:
        with live.http() as http, http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            steps_before = len(aborted)
        # the connection is closed now; the sequence must be gone almost at once
        deadline = time.monotonic() + 5
        while (engine.last_stats.num_running or "abort" not in aborted[steps_before:]) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.last_stats.num_running == 0 and "abort" in aborted[steps_before:]
    finally:
        engine.request_listeners.pop()


def test_a_disconnected_non_streaming_request_is_aborted(live):
    import httpx

    engine = live.engine
    ended = []
    engine.request_listeners.append(lambda stats: ended.append(stats))
    body = {"model": MODEL, "prompt": "Go on", "max_tokens": 480, "ignore_eos": True}
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{live.url}/v1/completions", json=body, timeout=0.1)
        deadline = time.monotonic() + 5
        while not ended and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        engine.request_listeners.pop()
    assert ended[0].finish_reason == "abort" and ended[0].generation_tokens < 480


def test_stop_strings_apply_to_generated_text_only(live):
    client = live.client()
    base = client.completions.create(model=MODEL, prompt="a b a b", max_tokens=6, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    for logprobs in (None, 1):
        out = client.completions.create(model=MODEL, prompt="a b a b", max_tokens=6, temperature=0, echo=True,
                                        logprobs=logprobs, stop=[" b"], extra_body={"ignore_eos": True})
        expected = "a b a b" + base[: base.find(" b")] if " b" in base else "a b a b" + base
        assert out.choices[0].text == expected  # " b" in the echoed prompt does not stop anything


def test_a_stop_string_completed_by_the_last_token_reports_stop(live):
    client = live.client()
    out = client.completions.create(model=MODEL, prompt="Tell me", max_tokens=8, temperature=0, logprobs=0,
                                    extra_body={"ignore_eos": True})
    text, last_offset = out.choices[0].text, out.choices[0].logprobs.text_offset[-1]
    stop = text[last_offset - 1 : last_offset + 1]  # spans the boundary into the 8th and last token
    again = client.completions.create(model=MODEL, prompt="Tell me", max_tokens=8, temperature=0, stop=[stop],
                                      extra_body={"ignore_eos": True})
    assert again.choices[0].finish_reason == "stop" and again.choices[0].text == text[: text.find(stop)]


def test_any_64_bit_seed_works_and_hurts_no_neighbour(live):
    client = live.client()
    for seed in (2**64 - 1, -(2**63), 0):
        out = client.completions.create(model=MODEL, prompt="x", max_tokens=3, seed=seed, n=2)  # raises on a 500
        assert len(out.choices) == 2 and all(c.finish_reason in ("stop", "length") for c in out.choices)
    top = client.completions.create(model=MODEL, prompt="x", max_tokens=5, seed=2**64 - 1, temperature=1.0,
                                    extra_body={"ignore_eos": True})
    same = client.completions.create(model=MODEL, prompt="x", max_tokens=5, seed=-1, temperature=1.0,
                                     extra_body={"ignore_eos": True})
    assert top.choices[0].text == same.choices[0].text  # seeds are taken modulo 2**64
    for seed in (2**64, -(2**63) - 1, 10**40):  # bounded: refused, never converted into a huge integer
        response = live.http().post("/v1/completions", json={"prompt": "x", "seed": seed})
        assert response.status_code == 400 and response.json()["error"]["param"] == "seed", response.text


def test_stop_token_ids_end_the_choice(live):
    client = live.client()
    base = client.completions.create(model=MODEL, prompt="Tell me", max_tokens=10, temperature=0, logprobs=0,
                                     extra_body={"ignore_eos": True})
    ids = live.http().post("/tokenize", json={"prompt": base.choices[0].logprobs.tokens[3]}).json()["tokens"]
    out = client.completions.create(model=MODEL, prompt="Tell me", max_tokens=10, temperature=0,
                                    extra_body={"ignore_eos": True, "stop_token_ids": ids})
    assert out.choices[0].finish_reason == "stop" and out.usage.completion_tokens <= 4


def test_echo_of_a_one_token_prompt(live):
    out = live.client().completions.create(model=MODEL, prompt="Hi", max_tokens=2, temperature=0, echo=True,
                                           logprobs=1)
    lp = out.choices[0].logprobs
    assert out.choices[0].text.startswith("Hi") and lp.tokens[0] == "Hi" and lp.token_logprobs[0] is None
    assert len(lp.tokens) == 1 + out.usage.completion_tokens
