"""`gpt2-serve train-detector` against a live server with the tiny model, and /v1/score serving the
judge it trained: the same probabilities as the offline judge on the same texts."""

import json
import shutil
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.api.lifecycle import Phase
from app.cli import cli
from app.config import Settings
from app.detect.data import cut, read_dataset
from app.detect.features import from_result
from app.detect.judge import JudgeError, load
from app.detect.separation import auroc
from app.main import create_app
from app.model.loader import PACKAGED_TOKENIZER
from tests.conftest import make_hf_model
from tests.integration.conftest import start_server

NO_JUDGE = "no judge loaded; train one with gpt2-serve train-detector and set GPT2_DETECTOR"


def train(*args: str):
    return CliRunner().invoke(cli, ["train-detector", *args])


@pytest.fixture(scope="module")
def trained(live, human_file, tmp_path_factory):
    """A judge of the model's greedy samples vs real prose (an easy split), and its report."""
    out = tmp_path_factory.mktemp("judge") / "tiny-judge"
    result = train("--human", str(human_file), "--generate", "40", "--decoding", "greedy", "--url", live.url,
                   "--out", str(out), "--max-tokens", "48", "--min-tokens", "24", "--no-limits", "--batch-size", "8")
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def judged_server(tiny_model_dir, trained):
    # max_request_share 1: the test sends every held-out text in one call (more than half the queue)
    server = start_server(model=tiny_model_dir, served_model_name="tiny-gpt2", detector=str(trained[0]),
                          max_request_share=1.0)
    yield server
    server.stop()


def test_training_separates_greedy_samples_from_prose_far_above_chance(trained):
    out, report = trained
    assert {p.name for p in out.iterdir()} >= {"judge.json", "report.json", "report.md", "roc.png", "dataset.jsonl"}
    held_out = report["held_out"]
    assert held_out["num_human"] >= 5 and held_out["num_machine"] >= 5
    assert held_out["auroc"] > 0.9
    assert set(report["per_source"]) == {"greedy"} and "fast_detect_gpt" in report["statistics"]
    rows = read_dataset(out / "dataset.jsonl")
    assert {r["split"] for r in rows} == {"train", "test"}
    for group in {r["group"] for r in rows}:  # a human text and its continuation stay on one side
        assert len({r["split"] for r in rows if r["group"] == group}) == 1


def test_served_probabilities_equal_the_offline_judges(trained, judged_server, live):
    out, _ = trained
    judge = load(out)
    texts = [r["text"] for r in read_dataset(out / "dataset.jsonl") if r["split"] == "test"]
    with httpx.Client(base_url=judged_server.url, timeout=60) as http:
        body = http.post("/v1/score", json={"input": texts}).json()
        numbers_only = http.post("/v1/score", json={"input": texts, "return_tokens": False}).json()
    assert body["detector"] == {"loaded": True, "name": "tiny-judge", "threshold": judge.threshold}
    served = np.array([r["detection"]["judge"]["machine_probability"] for r in body["data"]])
    assert ((served >= 0) & (served <= 1)).all() and len(served) == len(texts)
    # the offline judge on the features of the very same response
    offline = judge.predict_proba(np.stack([from_result(r) for r in body["data"]]))
    np.testing.assert_allclose(served, offline, rtol=0, atol=1e-12)
    # and on another server's scores of the same texts (float rounding of other batch shapes only)
    with httpx.Client(base_url=live.url, timeout=60) as http:
        plain = http.post("/v1/score", json={"input": texts}).json()["data"]
    np.testing.assert_allclose(served, judge.predict_proba(np.stack([from_result(r) for r in plain])), atol=1e-4)
    np.testing.assert_allclose(served, [r["detection"]["judge"]["machine_probability"]
                                        for r in numbers_only["data"]], atol=1e-6)
    labels = np.array([r["label"] for r in read_dataset(out / "dataset.jsonl") if r["split"] == "test"])
    assert auroc(served[labels == 1], served[labels == 0]) > 0.9
    verdict = body["data"][0]["detection"]["judge"]
    assert verdict["verdict"] == ("machine" if verdict["machine_probability"] >= judge.threshold else "human")
    assert len(verdict["top_features"]) == 5 and {"name", "value", "contribution"} == set(verdict["top_features"][0])


def test_without_a_judge_or_without_detect_the_response_says_so(live, judged_server):
    with httpx.Client(base_url=live.url, timeout=60) as http:
        body = http.post("/v1/score", json={"input": "A short text to score, with no judge loaded."}).json()
    assert body["detector"] == {"loaded": False, "message": NO_JUDGE}
    assert body["data"][0]["detection"]["judge"] is None
    with httpx.Client(base_url=judged_server.url, timeout=60) as http:
        body = http.post("/v1/score", json={"input": "Scored without detection.", "detect": False}).json()
        one_token = http.post("/v1/score", json={"input": "Hello"}).json()
    assert body["detector"]["loaded"] is True and body["data"][0]["detection"] is None
    assert one_token["data"][0]["detection"] is None  # nothing scored, nothing to judge


def test_a_server_refuses_a_judge_trained_on_another_model(trained, tmp_path):
    other = tmp_path / "other-model"
    make_hf_model(n_layer=1).save_pretrained(other)  # another shape: another parameter count
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(PACKAGED_TOKENIZER / name, other / name)
    app = create_app(Settings(model=str(other), detector=str(trained[0]), metrics=False))
    with TestClient(app):  # runs the lifespan: loads the model, then the judge
        state = app.state.gpt2
        deadline = time.monotonic() + 60
        while state.lifecycle.phase is Phase.LOADING and time.monotonic() < deadline:
            time.sleep(0.05)
    assert state.lifecycle.phase is Phase.FAILED and isinstance(state.lifecycle.error, JudgeError)
    assert state.service is None
    message = str(state.lifecycle.error)
    assert "was trained on the scores of model" in message and "parameter count" in message


# --- bad input: one line on stderr, exit 2 ---------------------------------------------------------
def assert_usage_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_bad_inputs_are_one_line_errors(tmp_path, human_file, live):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": "cut off\n')
    out = str(tmp_path / "out")
    assert_usage_error(train("--human", str(empty), "--generate", "10", "--out", out, "--url", live.url),
                       "--human", "no texts")
    assert_usage_error(train("--human", str(broken), "--generate", "10", "--out", out, "--url", live.url),
                       "broken.jsonl:2", "not valid JSON")
    assert_usage_error(train("--human", str(tmp_path / "missing.txt"), "--generate", "10", "--out", out),
                       "no such file")
    assert_usage_error(train("--human", str(human_file), "--out", out), "no machine texts")
    assert_usage_error(train("--human", str(human_file), "--machine", str(empty), "--out", out), "--machine")
    assert_usage_error(train("--human", str(human_file), "--generate", "5", "--decoding", "beam", "--out", out),
                       "unknown setting 'beam'")
    # one class only, once cut: every machine text is shorter than --min-tokens
    short = tmp_path / "short.txt"
    short.write_text("Too short.\nAlso short.\n")
    assert_usage_error(train("--human", str(human_file), "--machine", str(short), "--out", out, "--url", live.url),
                       "only 0 machine texts")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("something")
    assert_usage_error(train("--human", str(human_file), "--generate", "5", "--out", str(tmp_path / "full")),
                       "--overwrite")


def test_the_judges_fields_are_in_the_openapi_schema():
    schemas = create_app(Settings(load_format="dummy")).openapi()["components"]["schemas"]
    assert set(schemas["JudgeVerdict"]["properties"]) == {"machine_probability", "verdict", "threshold",
                                                          "top_features"}
    assert set(schemas["DetectorInfo"]["properties"]) == {"loaded", "message", "name", "threshold"}
    assert "judge" in schemas["Detection"]["properties"] and "detector" in schemas["ScoreResponse"]["required"]


def test_cut_keeps_the_first_or_last_tokens_or_every_piece(live, human_file):
    text = " ".join(human_file.read_text().splitlines()[:6])
    with httpx.Client(base_url=live.url, timeout=60) as http:
        ids = http.post("/tokenize", json={"prompt": text}).json()["tokens"]
        assert len(ids) > 100
        [(index, first, first_ids)] = cut(http, [text], 40, 10)
        [(_, _, last_ids)] = cut(http, [text], 40, 10, last=True)
        pieces = cut(http, ["too short", text], 40, 10, chunk=True)
        assert cut(http, ["too short"], 40, 10) == []
    assert index == 0 and first_ids == ids[:40] and last_ids == ids[-40:] and text.startswith(first.strip()[:20])
    assert {i for i, _, _ in pieces} == {1}  # the short text is left out, every piece knows its text
    expected = [ids[start : start + 40] for start in range(0, len(ids), 40)]
    assert [p for _, _, p in pieces] == [p for p in expected if len(p) >= 10]


def test_an_unreachable_server_is_a_one_line_error(human_file, tmp_path):
    from tests.integration.conftest import free_port

    result = train("--human", str(human_file), "--generate", "10", "--out", str(tmp_path / "out"), "--url",
                   f"http://127.0.0.1:{free_port()}", "--timeout", "5")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and not (tmp_path / "out").exists()
