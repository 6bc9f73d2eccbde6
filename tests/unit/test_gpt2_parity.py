"""Our forward equals transformers' GPT2LMHeadModel, at prefill and through decode."""

import torch

from app.engine.scheduler import SchedulerOutput
from app.engine.sequence import SamplingParams, Sequence
from app.model.gpt2 import GPT2Config, KVCache, Prefill, AttentionPlan
from app.model.loader import load_model
from app.model.runner import ModelRunner

TOL = 1e-4


def reference_logits(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0]  # [n, V]


def test_prefill_and_decode_match_transformers(tiny_model_dir, hf_model):
    model = load_model(tiny_model_dir).model
    runner = ModelRunner(model, num_slots=4, max_len=512, eos_token_id=None)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in (1, 7, 33, 130)]
    seqs = [Sequence(str(i), p, SamplingParams(max_tokens=8, temperature=0.0)) for i, p in enumerate(prompts)]
    for slot, seq in enumerate(seqs):
        seq.slot = slot

    # prefill all four in one packed step, keeping every position's logits
    ids = [t for p in prompts for t in p]
    positions = [i for p in prompts for i in range(len(p))]
    slots = [s.slot for s in seqs for _ in s.prompt_token_ids]
    starts = torch.tensor([0, *map(len, prompts)]).cumsum(0).tolist()
    plan = AttentionPlan(0, prefills=tuple(Prefill(starts[i], len(p), i, 0) for i, p in enumerate(prompts)))
    with torch.inference_mode():
        hidden = model(torch.tensor(ids), torch.tensor(positions), torch.tensor(slots), plan, runner.cache)
        logits = model.logits(hidden)
    for i, p in enumerate(prompts):
        ours = logits[starts[i] : starts[i + 1]]
        assert (ours - reference_logits(hf_model, p)).abs().max() <= TOL

    # then decode greedily, all four in one step each, against a full recompute by transformers
    for seq in seqs:
        seq.num_computed = seq.num_prompt_tokens
        seq.output_token_ids.append(int(reference_logits(hf_model, seq.prompt_token_ids)[-1].argmax()))
    for _ in range(6):
        with torch.inference_mode():
            plan = runner._plan(SchedulerOutput(decodes=seqs))
            hidden = model(torch.tensor([s.last_token_id for s in seqs]),
                           torch.tensor([s.num_computed for s in seqs]), torch.tensor([s.slot for s in seqs]),
                           plan, runner.cache)
            logits = model.logits(hidden)
        for seq, row in zip(seqs, logits):
            ref = reference_logits(hf_model, seq.prompt_token_ids + seq.output_token_ids)[-1]
            assert (row - ref).abs().max() <= TOL
            seq.num_computed += 1
            seq.output_token_ids.append(int(ref.argmax()))
