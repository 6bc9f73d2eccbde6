"""A few-step run of `gpt2-serve train` on a tiny model: the loss falls, the output directory is
complete, the server and transformers load it with the same numbers, a resumed run retraces the
uninterrupted one, and two DDP processes take the same first step as one process."""

import json
import shutil

import pytest
import torch
from transformers import GPT2LMHeadModel

from tests.integration.conftest import start_server
from tests.train.conftest import TINY

# 8 optimizer steps of 2 x 4 blocks of 32 tokens; evaluate and checkpoint at steps 4 and 8
RUN = [*TINY, "--block-size", "32", "--batch-size", "4", "--grad-accum", "2", "--max-steps", "8",
       "--eval-every", "4", "--lr", "1e-2", "--warmup", "1", "--seed", "7"]
DUMP = "GPT2_TRAIN_DUMP_GRADS"


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train_losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus, run_train):
    """One single-process run (its first-step gradients dumped for the DDP comparison)."""
    work = tmp_path_factory.mktemp("run")
    out = work / "model"
    result = run_train(corpus, "-o", out, *RUN, env={DUMP: str(work / "single")})
    assert result.returncode == 0, result.stderr[-3000:]
    return work, out, result


def test_loss_falls_and_the_run_is_reported(trained):
    work, out, result = trained
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1] - 1.0, losses
    evals = {r["step"]: r["eval_loss"] for r in metrics(out) if "eval_loss" in r}
    assert evals[8] < evals[4], evals
    assert all(r["tokens_per_s"] > 0 for r in metrics(out) if r["step"] > 1 and "final_eval_loss" not in r)
    summary = json.loads((out / "summary.json").read_text())
    assert metrics(out)[-1] == {"step": 8, "final_eval_loss": summary["eval_loss"],
                                "final_eval_perplexity": summary["eval_perplexity"]}
    assert summary["steps"] == 8 and summary["tokens_seen"] == 8 * 2 * 4 * 32
    assert summary["eval_perplexity"] == pytest.approx(torch.tensor(evals[8]).exp().item(), rel=1e-5)
    assert summary["unigram_perplexity"] > 1
    assert f"held-out perplexity {summary['eval_perplexity']:,.2f}" in result.stdout
    assert "unigram baseline" in result.stdout


def test_output_directory_is_a_complete_model(trained):
    _, out, _ = trained
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert f"{summary['eval_perplexity']:,.2f}" in card and "| `lr` | `0.01` |" in card
    assert summary["data"]["files"][0] in card and summary["data"]["documents"] == 2
    assert json.loads((out / "config.json").read_text())["n_positions"] == 32


def test_server_and_transformers_load_it_alike(trained):
    """The served model (our loader) and transformers' from_pretrained give the same log-probabilities
    for every token of a text and its top alternatives, and the same greedy continuation."""
    _, out, _ = trained
    reference = GPT2LMHeadModel.from_pretrained(out).eval()
    server = start_server(model=str(out))
    try:
        with server.http() as http:
            scored = http.post("/v1/score", json={"input": "The old man walked to the river in the morning. A dog",
                                                  "top_logprobs": 3, "detect": False}).json()
            completion = http.post("/v1/completions", json={"prompt": [464, 18739], "max_tokens": 6,
                                                            "temperature": 0, "logprobs": 1}).json()
    finally:
        server.stop()
    (result,) = scored["data"]
    ids = result["token_ids"]
    with torch.no_grad():
        logprobs = reference(torch.tensor([ids])).logits[0].log_softmax(-1)  # [n, V]
    expected = logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    served = torch.tensor(result["token_logprobs"][1:])
    assert result["token_logprobs"][0] is None and len(served) == len(ids) - 1
    assert (served - expected).abs().max() <= 1e-4
    for position, top in enumerate(result["top_logprobs"][1:]):
        for alt in top:
            assert abs(alt["logprob"] - logprobs[position, alt["token_id"]].item()) <= 1e-4

    (choice,) = completion["choices"]
    greedy = reference.generate(torch.tensor([[464, 18739]]), max_new_tokens=6, do_sample=False,
                                pad_token_id=50256)[0, 2:]
    assert choice["finish_reason"] == "length" and len(choice["logprobs"]["tokens"]) == 6
    assert choice["text"] == reference_text(out, greedy.tolist())


def reference_text(out, ids: list[int]) -> str:
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(out).decode(ids, clean_up_tokenization_spaces=False)


def test_resume_retraces_the_uninterrupted_run(trained, tmp_path, corpus, run_train):
    """Lose everything after the step-4 checkpoint, resume: steps 5-8 repeat the same losses."""
    _, out, _ = trained
    resumed = tmp_path / "model"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-8")
    result = run_train(corpus, "-o", resumed, *RUN, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [r["step"] for r in metrics(resumed) if "loss" in r]
    assert steps == list(range(1, 9)), steps  # one record per step: the lost ones were dropped
    again, first = train_losses(resumed), train_losses(out)
    for step in range(5, 9):
        assert again[step] == pytest.approx(first[step], rel=1e-5), step
    assert json.loads((resumed / "summary.json").read_text())["eval_loss"] == pytest.approx(
        json.loads((out / "summary.json").read_text())["eval_loss"], rel=1e-5)


def test_two_ddp_processes_take_the_same_first_step(trained, tmp_path, corpus, run_train):
    """torchrun, 2 processes x 2 blocks x 2 accumulated batches = the single run's 8 blocks a step.
    The run is cut by a time budget, which both ranks must agree on (else one hangs) and which the
    learning-rate schedule must have decayed to by then (it would be near its peak by steps)."""
    work, _, _ = trained
    ddp_args = list(RUN)
    ddp_args[ddp_args.index("--batch-size") + 1] = "2"
    ddp_args[ddp_args.index("--max-steps") + 1] = "100000"
    ddp_args[ddp_args.index("--eval-every") + 1] = "100000"
    result = run_train(corpus, "-o", tmp_path / "model", *ddp_args, "--time-budget", "8s", processes=2,
                       env={DUMP: str(tmp_path / "ddp")})
    assert result.returncode == 0, result.stderr[-3000:]
    last = [r for r in metrics(tmp_path / "model") if "loss" in r][-1]
    assert 3 <= last["step"] < 100000
    assert last["learning_rate"] < 0.25 * 1e-2  # peak 1e-2; by steps it would still be above 0.99 of it
    single = torch.load(work / "single.rank0.pt")
    ranks = [torch.load(tmp_path / f"ddp.rank{r}.pt") for r in (0, 1)]
    assert single["world_size"] == 1 and [d["world_size"] for d in ranks] == [2, 2]

    # the same 8 blocks, split between the ranks (each saw 2 micro-batches of 2)
    def rows(inputs):
        return sorted(map(tuple, torch.cat(inputs).tolist()))

    assert [len(d["inputs"]) for d in ranks] == [2, 2] and len(single["inputs"]) == 2
    assert rows(ranks[0]["inputs"]) != rows(ranks[1]["inputs"])
    assert rows(ranks[0]["inputs"] + ranks[1]["inputs"]) == rows(single["inputs"])

    # after the all-reduce both ranks hold the single process's gradients
    for name, grad in single["grads"].items():
        for d in ranks:
            torch.testing.assert_close(d["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    ddp_loss = metrics(tmp_path / "model")[0]
    assert ddp_loss["step"] == 1
    assert ddp_loss["loss"] == pytest.approx(train_losses(work / "model")[1], rel=1e-5)
