"""POST /v1/score on a real server with the tiny model, checked against transformers' own model."""

import json
import math
import random
import statistics
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import cli
from app.scoring import plan_windows
from tests.integration.conftest import score, wait_for

TOL = 1e-4
MAX_LEN = 512  # the tiny model's n_positions


def random_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(50257) for _ in range(n)]


def reference(hf_model, ids: list[int]) -> torch.Tensor:
    """transformers' log-softmax over the vocabulary at every position: [n, V] float64."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0]
    return logits.double().log_softmax(-1)


def check_against_reference(result: dict, ids: list[int], ref: torch.Tensor, first: int, top: int = 0) -> None:
    """Tokens ids[first:] of `result` against the reference log-softmax of ids (row t-1 scores token t)."""
    lps, ranks = result["token_logprobs"], result["ranks"]
    offset = len(lps) - (len(ids) - first)  # 1 (a null) without context, 0 with
    for j, t in enumerate(range(first, len(ids))):
        row, chosen = ref[t - 1], ref[t - 1, ids[t]].item()
        assert lps[offset + j] == pytest.approx(chosen, abs=TOL)
        # 1 + #tokens strictly more likely; a token within TOL of the chosen one may fall either side
        lo, hi = 1 + int((row > chosen + TOL).sum()), 1 + int((row > chosen - TOL).sum())
        assert lo <= ranks[offset + j] <= hi
        if top:
            values, indices = row.topk(top)
            got = result["top_logprobs"][offset + j]
            assert [a["logprob"] for a in got] == pytest.approx(values.tolist(), abs=TOL)
            for a, i, v in zip(got, indices.tolist(), values.tolist(), strict=True):
                if int((abs(row - v) < TOL).sum()) == 1:  # no near-tie: the same token
                    assert a["token_id"] == i


def reference_stats(ref: torch.Tensor, ids: list[int], first: int) -> tuple[float, float]:
    """(mean entropy, Fast-DetectGPT criterion) of tokens ids[first:], in float64."""
    rows = ref[first - 1 : len(ids) - 1]
    p = rows.exp()
    entropy = -(p * rows).sum(-1)
    var = (p * rows.square()).sum(-1) - entropy.square()
    chosen = rows.gather(1, torch.tensor(ids[first:]).unsqueeze(1)).squeeze(1)
    return entropy.mean().item(), ((chosen.sum() + entropy.sum()) / var.sum().sqrt()).item()


# --- exactness -----------------------------------------------------------------------------------
def test_every_logprob_and_rank_equals_transformers(http, hf_model):
    rng = random.Random(0)
    texts = ["Hello world, how are you today?", "The capital of France is Paris.", "a",
             "Colourless green ideas sleep furiously. " * 5]
    ids_list = [random_ids(rng, n) for n in (2, 17, 130)]
    out = score(http, input=texts, top_logprobs=5)
    tok = out["data"]
    out_ids = score(http, input=ids_list, top_logprobs=3)["data"]
    cases = [*((r, r["token_ids"], 5) for r in tok), *((r, i, 3) for r, i in zip(out_ids, ids_list, strict=True))]
    for result, ids, top in cases:
        assert result["token_ids"] == ids and len(result["tokens"]) == len(ids)
        assert result["token_logprobs"][0] is None and result["ranks"][0] is None
        assert result["top_logprobs"][0] is None
        assert result["num_tokens"] == len(ids) - 1 and result["num_context_tokens"] == 0
        if len(ids) == 1:  # nothing to score
            assert result["mean_logprob"] is None and result["perplexity"] is None and result["detection"] is None
            continue
        ref = reference(hf_model, ids)
        check_against_reference(result, ids, ref, 1, top)
        lps = result["token_logprobs"][1:]
        assert result["sum_logprob"] == pytest.approx(math.fsum(lps), abs=1e-9)
        assert result["mean_logprob"] == pytest.approx(result["sum_logprob"] / (len(ids) - 1), abs=1e-12)
        assert result["perplexity"] == pytest.approx(math.exp(-result["mean_logprob"]), rel=1e-12)
        assert result["is_greedy"] == all(r == 1 for r in result["ranks"][1:])
        mean_entropy, criterion = reference_stats(ref, ids, 1)
        rows = ref[: len(ids) - 1]
        entropies = (-(rows.exp() * rows).sum(-1)).tolist()
        assert result["entropies"][0] is None and result["entropies"][1:] == pytest.approx(entropies, abs=TOL)
        d = result["detection"]
        assert d["mean_entropy"] == pytest.approx(mean_entropy, abs=TOL)
        assert d["fast_detect_gpt"] == pytest.approx(criterion, abs=1e-3)
        ranks = result["ranks"][1:]
        assert d["mean_log_rank"] == pytest.approx(sum(map(math.log, ranks)) / len(ranks), abs=1e-9)
        assert d["gltr"]["top_10"] == pytest.approx(sum(r <= 10 for r in ranks) / len(ranks))
        assert d["gltr"]["rest"] == pytest.approx(sum(r > 1000 for r in ranks) / len(ranks))
    assert out["usage"] == {"prompt_tokens": sum(len(r["token_ids"]) for r in tok),
                            "scored_tokens": sum(r["num_tokens"] for r in tok),
                            "total_tokens": sum(len(r["token_ids"]) for r in tok)}
    assert out["object"] == "score" and out["model"] == "tiny-gpt2"


def test_greedy_text_is_flagged_greedy(http, live):
    completion = http.post("/v1/completions", json={"prompt": [464], "max_tokens": 12, "temperature": 0,
                                                    "logprobs": 0, "ignore_eos": True}).json()
    continuation = completion["choices"][0]["logprobs"]["tokens"]
    ids = [464] + [token_id(live, t) for t in continuation]
    result = score(http, input=ids[1:], context=ids[:1])["data"][0]
    assert result["is_greedy"] is True and set(result["ranks"]) == {1}
    assert score(http, input=ids)["data"][0]["is_greedy"] is True


def test_return_tokens_false_gives_the_numbers_only(http):
    full = score(http, input="Numbers only, please.")["data"][0]
    short = score(http, input="Numbers only, please.", return_tokens=False, detect=False)["data"][0]
    assert short["tokens"] is None and short["token_logprobs"] is None and short["ranks"] is None
    assert short["detection"] is None and short["sum_logprob"] == full["sum_logprob"]


# --- context / continuation -----------------------------------------------------------------------
def echo_logprobs(http, ids: list[int]) -> list[float | None]:
    response = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["logprobs"]["token_logprobs"]


def test_continuation_scores_equal_echo_logprobs(http, live, hf_model):
    pairs = [("The capital of France is", " Paris"), ("The capital of France is ", "Paris"),
             ("Once upon a time", " there was a princess who lived in a castle."), ("", "Hello there")]
    out = score(http, input=[c for _, c in pairs], context=[c for c, _ in pairs], top_logprobs=2)["data"]
    tok = live.state.service.tokenizer
    for (context, continuation), result in zip(pairs, out, strict=True):
        stripped = context.rstrip()
        # the context's trailing space moves to the continuation; an empty context is <|endoftext|>
        context_ids = tok.encode(stripped) or [50256]
        input_ids = tok.encode(context[len(stripped):] + continuation)
        assert result["num_context_tokens"] == len(context_ids) and result["token_ids"] == input_ids
        assert result["num_tokens"] == len(input_ids) and None not in result["token_logprobs"]
        ids = context_ids + input_ids
        echo = echo_logprobs(http, ids)[len(context_ids):]
        assert result["token_logprobs"] == pytest.approx(echo, abs=1e-5)
        assert result["sum_logprob"] == pytest.approx(sum(echo), abs=1e-4)
        check_against_reference(result, ids, reference(hf_model, ids), len(context_ids), top=2)
    assert out[0]["token_ids"] == out[1]["token_ids"] == [6342]  # " Paris" either way


def test_token_id_context(http, hf_model):
    rng = random.Random(3)
    contexts = [random_ids(rng, n) for n in (1, 40, 200)]
    inputs = [random_ids(rng, n) for n in (1, 25, 100)]
    out = score(http, input=inputs, context=contexts)["data"]
    for context, inp, result in zip(contexts, inputs, out, strict=True):
        ids = context + inp
        assert result["num_tokens"] == len(inp) and result["num_context_tokens"] == len(context)
        assert result["token_logprobs"] == pytest.approx(echo_logprobs(http, ids)[len(context):], abs=1e-5)
        check_against_reference(result, ids, reference(hf_model, ids), len(context))


# --- batching --------------------------------------------------------------------------------------
def assert_same_scores(a: dict, b: dict) -> None:
    assert a["token_ids"] == b["token_ids"]
    assert a["token_logprobs"][1:] == pytest.approx(b["token_logprobs"][1:], abs=1e-5)
    # float32 rounding differs with the batch's shape (~1e-6), enough to swap the chosen token with a
    # near-tied one deep in the tail (~2500 tokens per nat there): ranks may differ by one or two out there
    for x, y in zip(a["ranks"][1:], b["ranks"][1:], strict=True):
        assert x == y if min(x, y) <= 100 else abs(x - y) <= 2
    assert a["is_greedy"] == b["is_greedy"] and a["detection"]["gltr"] == pytest.approx(b["detection"]["gltr"])
    for key in ("sum_logprob", "mean_logprob"):
        assert a[key] == pytest.approx(b[key], abs=1e-4)
    for key in ("mean_entropy", "fast_detect_gpt", "mean_log_rank"):
        assert a["detection"][key] == pytest.approx(b["detection"][key], abs=1e-3)


def test_alone_batched_and_beside_generation_give_the_same_numbers(http, live):
    rng = random.Random(4)
    inputs = [random_ids(rng, rng.randint(2, 300)) for _ in range(32)]
    alone = [score(http, input=ids)["data"][0] for ids in inputs[:6]]
    steps = []
    live.engine.step_listeners.append(steps.append)
    try:
        batched = score(http, input=inputs)["data"]
        batch_sizes = [s.batch_size for s in steps]
        steps.clear()
        # a long generation runs while the batch is scored again
        generation = {}

        def generate():
            generation["response"] = httpx.post(f"{live.url}/v1/completions", timeout=120, json={
                "prompt": [[464]] * 4, "max_tokens": 400, "temperature": 1.0, "ignore_eos": True})

        thread = threading.Thread(target=generate)
        thread.start()
        deadline = time.monotonic() + 30
        while not any(s.num_decode_tokens for s in steps) and time.monotonic() < deadline:
            time.sleep(0.01)
        beside = score(http, input=inputs)["data"]
        thread.join(120)
    finally:
        live.engine.step_listeners.remove(steps.append)
    assert generation["response"].status_code == 200
    assert any(s.phase == "mixed" for s in steps), "scoring and generation shared steps"
    assert max(batch_sizes) > 1, "the 32 inputs were batched"
    for a, b in zip(alone, batched[:6], strict=True):
        assert_same_scores(a, b)
    for a, b in zip(batched, beside, strict=True):
        assert_same_scores(a, b)


# --- sliding window ------------------------------------------------------------------------------
def test_sliding_window_on_a_text_that_fits_equals_plain_scoring(http):
    text = "A short text that fits in the model's context. " * 10
    plain = score(http, input=text, top_logprobs=2)["data"][0]
    windowed = score(http, input=text, top_logprobs=2, window="sliding", stride=7)["data"][0]
    assert windowed["num_windows"] == 1
    assert {k: v for k, v in windowed.items() if k != "num_windows"} == \
        {k: v for k, v in plain.items() if k != "num_windows"}


@pytest.mark.parametrize("stride", [None, 300])
def test_sliding_window_scores_three_contexts_worth_each_token_once(http, hf_model, stride):
    rng = random.Random(5)
    ids = random_ids(rng, 3 * MAX_LEN)
    result = score(http, input=ids, window="sliding", stride=stride)["data"][0]
    windows = plan_windows(len(ids), 1, MAX_LEN, stride)
    assert result["num_windows"] == len(windows) > 3
    assert result["num_tokens"] == len(ids) - 1 and len(result["token_logprobs"]) == len(ids)
    assert result["token_logprobs"][0] is None and None not in result["token_logprobs"][1:]
    for w in windows:  # each token as transformers scores it given its window
        ref = reference(hf_model, ids[w.begin : w.end])
        sub = {"token_logprobs": [None] + result["token_logprobs"][w.score_from : w.end],
               "ranks": [None] + result["ranks"][w.score_from : w.end]}
        check_against_reference(sub, ids[w.begin : w.end], ref, w.score_from - w.begin)
    assert result["sum_logprob"] == pytest.approx(math.fsum(result["token_logprobs"][1:]), abs=1e-9)


def test_sliding_window_with_a_long_context(http, hf_model):
    rng = random.Random(6)
    context, inp = random_ids(rng, 600), random_ids(rng, 300)
    result = score(http, input=inp, context=context, window="sliding")["data"][0]
    ids = context + inp
    windows = plan_windows(len(ids), len(context), MAX_LEN, None)
    assert result["num_tokens"] == 300 and result["num_windows"] == len(windows)
    for w in windows:
        ref = reference(hf_model, ids[w.begin : w.end])
        sub = {"token_logprobs": result["token_logprobs"][w.score_from - 600 : w.end - 600],
               "ranks": result["ranks"][w.score_from - 600 : w.end - 600]}
        check_against_reference(sub, ids[w.begin : w.end], ref, w.score_from - w.begin)


# --- Fast-DetectGPT --------------------------------------------------------------------------------
_INVERSE: dict[str, int] = {}


def token_id(live, token: str) -> int:
    """The id of a token as /v1/completions spells it (token_str is one to one)."""
    if not _INVERSE:
        tok = live.state.service.tokenizer
        _INVERSE.update((tok.token_str(i), i) for i in range(tok.vocab_size))
    return _INVERSE[token]


def sample(http, live, prompts: list[list[int]], temperature: float, length: int) -> list[list[int]]:
    """Continuations the engine draws (as token ids), `length` tokens each."""
    out = []
    for start in range(0, len(prompts), 50):  # the test server queues at most 64
        response = http.post("/v1/completions", json={
            "prompt": prompts[start : start + 50], "max_tokens": length, "temperature": temperature,
            "logprobs": 0, "ignore_eos": True})
        assert response.status_code == 200, response.text
        out += [[token_id(live, t) for t in c["logprobs"]["tokens"]] for c in response.json()["choices"]]
    return out


def criteria(http, contexts: list[list[int]], inputs: list[list[int]]) -> list[float]:
    values = []
    for start in range(0, len(inputs), 50):
        data = score(http, input=inputs[start : start + 50], context=contexts[start : start + 50],
                     return_tokens=False)["data"]
        values += [d["detection"]["fast_detect_gpt"] for d in data]
    return values


def test_fast_detect_gpt_is_standard_normal_on_the_models_own_samples(http, live):
    rng = random.Random(7)
    prompts = [[rng.randrange(50257)] for _ in range(200)]
    sampled = sample(http, live, prompts, 1.0, 40)
    assert all(len(s) == 40 for s in sampled)
    values = criteria(http, prompts, sampled)
    mean, sd = statistics.fmean(values), statistics.pstdev(values)
    assert abs(mean) < 0.3 and abs(sd - 1) < 0.3, (mean, sd)

    greedy = criteria(http, prompts[:40], sample(http, live, prompts[:40], 0.0, 40))
    uniform = criteria(http, prompts[:40], [random_ids(rng, 40) for _ in range(40)])
    assert min(greedy) > mean + 3 and statistics.fmean(greedy) > mean + 5, greedy
    assert max(uniform) < mean - 3 and statistics.fmean(uniform) < mean - 5, uniform
    # the statistics the detectors build on point the same way
    assert np.mean(greedy) > np.percentile(values, 99) and np.mean(uniform) < np.percentile(values, 1)


# --- errors and control -------------------------------------------------------------------------
@pytest.mark.parametrize("body,param,words", [
    ({"input": ""}, "input", "empty"),
    ({"input": ["fine", ""]}, "input", "empty (input 1)"),
    ({"input": []}, "input", None),
    ({"input": ["a", "b"], "context": ["c"]}, "context", "one entry per input"),
    ({"input": "a", "context": ["c", "d"]}, "context", "same form"),
    ({"input": "a", "top_logprobs": 21}, "top_logprobs", None),
    ({"input": "a", "top_logprobs": -1}, "top_logprobs", None),
    ({"input": [1, 2, 50257]}, "input", "vocabulary"),
    ({"input": [1, 2], "context": [99999]}, "context", "vocabulary"),
    ({"input": "a", "window": "sliding", "stride": 512}, "stride", "511"),
    ({"input": "a", "model": "gpt-4"}, "model", None),
])
def test_bad_inputs_are_400_naming_the_field(http, body, param, words):
    response = http.post("/v1/score", json=body)
    expected = 404 if param == "model" else 400
    assert response.status_code == expected, response.text
    error = response.json()["error"]
    assert error["param"] == param
    if words:
        assert words in error["message"]


def test_too_long_without_a_window_is_400_with_the_counts(http):
    response = http.post("/v1/score", json={"input": list(range(1, 600))})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "input" and error["code"] == "context_length_exceeded"
    assert "599 tokens" in error["message"] and "512" in error["message"] and "sliding" in error["message"]
    response = http.post("/v1/score", json={"input": list(range(1, 300)), "context": list(range(1, 300))})
    assert response.status_code == 400 and "598 tokens (context included)" in response.json()["error"]["message"]


def test_more_sequences_than_the_queue_holds_is_400(http):
    response = http.post("/v1/score", json={"input": ["x y"] * 65})
    assert response.status_code == 400 and response.json()["error"]["param"] == "input"
    assert "GPT2_MAX_QUEUE" in response.json()["error"]["message"]


def test_queue_full_is_429_with_retry_after(http, live):
    saved, live.engine.admission.capacity = live.engine.admission.capacity, 0  # every request finds the engine full
    try:
        response = http.post("/v1/score", json={"input": ["one two", "three four"]})
    finally:
        live.engine.admission.capacity = saved
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "queue_full"
    assert live.engine.num_unfinished == 0


def test_a_client_that_goes_away_aborts_every_sequence(live):
    aborted = []
    live.engine.request_listeners.append(aborted.append)
    try:
        rng = random.Random(8)
        body = {"input": [random_ids(rng, 511) for _ in range(64)], "top_logprobs": 20}  # seconds of work
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{live.url}/v1/score", json=body, timeout=0.5)
        # every sequence ends: scored before the client left, or aborted (their stats come back)
        wait_for(lambda: len(aborted) == 64, timeout=20)
    finally:
        live.engine.request_listeners.remove(aborted.append)
    assert live.engine.num_unfinished == 0
    assert sum(s.finish_reason == "abort" for s in aborted) > 0
    wait_for(lambda: live.engine.last_stats.num_running == live.engine.last_stats.num_waiting == 0)


# --- calibrate -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled_files(http, live, tmp_path_factory):
    """Machine texts: the model's greedy continuations; human texts: random tokens (both as text)."""
    rng = random.Random(9)
    tok = live.state.service.tokenizer
    prompts = [[rng.randrange(50257)] for _ in range(24)]
    machine = [tok.decode(p + s) for p, s in zip(prompts, sample(http, live, prompts, 0.0, 30), strict=True)]
    human = [tok.decode(random_ids(rng, 31)) for _ in range(24)]
    path = tmp_path_factory.mktemp("calibrate")
    (path / "human.txt").write_text("\n".join(" ".join(t.split()) for t in human) + "\n", encoding="utf-8")
    (path / "machine.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in machine), encoding="utf-8")
    return path / "human.txt", path / "machine.jsonl"


def test_calibrate_against_a_running_server(live, labelled_files):
    human, machine = labelled_files
    result = CliRunner().invoke(cli, ["calibrate", "--human", str(human), "--machine", str(machine), "--url",
                                      live.url, "--fpr", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["statistic"]: r for r in json.loads(result.output)}
    assert {"fast_detect_gpt", "mean_logprob", "perplexity", "mean_log_rank", "gltr_top_10"} <= set(rows)
    assert rows["fast_detect_gpt"]["auroc"] > 0.95 and rows["mean_log_rank"]["auroc"] > 0.95
    for row in rows.values():
        assert row["num_human"] == 24 and row["num_machine"] == 24 and row["fpr"] <= 0.1
    table = CliRunner().invoke(cli, ["calibrate", "--human", str(human), "--machine", str(machine), "--url", live.url])
    assert table.exit_code == 0 and "fast_detect_gpt" in table.output and "AUROC" in table.output


def test_calibrate_in_process_gives_the_servers_numbers(live, labelled_files, tiny_model_dir, monkeypatch):
    human, machine = labelled_files
    monkeypatch.setenv("GPT2_MODEL", tiny_model_dir)
    monkeypatch.setenv("GPT2_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("GPT2_METRICS", "false")
    args = ["calibrate", "--human", str(human), "--machine", str(machine), "--fpr", "0.1", "--json"]
    local, remote = CliRunner().invoke(cli, args), CliRunner().invoke(cli, [*args, "--url", live.url])
    assert local.exit_code == 0 and remote.exit_code == 0, local.output + remote.output
    local, remote = json.loads(local.stdout), json.loads(remote.stdout)
    assert [r["statistic"] for r in local] == [r["statistic"] for r in remote]
    for a, b in zip(local, remote, strict=True):
        assert a["auroc"] == pytest.approx(b["auroc"], abs=1e-9)
        assert a["threshold"] == pytest.approx(b["threshold"], abs=1e-3)


def test_calibrate_plot_needs_matplotlib(live, labelled_files):
    human, machine = labelled_files
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        result = CliRunner().invoke(cli, ["calibrate", "--human", str(human), "--machine", str(machine), "--url",
                                          live.url, "--plot", "roc.png"])
        assert result.exit_code != 0 and "matplotlib" in result.output
    else:
        out = human.parent / "roc.png"
        result = CliRunner().invoke(cli, ["calibrate", "--human", str(human), "--machine", str(machine), "--url",
                                          live.url, "--plot", str(out)])
        assert result.exit_code == 0 and out.stat().st_size > 0
