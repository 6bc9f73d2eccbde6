"""Our forward equals transformers' GPT2LMHeadModel, at prefill and through decode."""

import torch

from app.engine.scheduler import SchedulerOutput
from app.engine.sequence import SamplingParams, Sequence
from app.model.gpt2 import AttentionPlan, Prefill
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
        for seq, row in zip(seqs, logits, strict=True):
            ref = reference_logits(hf_model, seq.prompt_token_ids + seq.output_token_ids)[-1]
            assert (row - ref).abs().max() <= TOL
            seq.num_computed += 1
            seq.output_token_ids.append(int(ref.argmax()))


def test_chunked_prefill_and_scattered_slots_match_transformers(tiny_model_dir, hf_model):
    """A prompt prefilled in chunks (attending to its cached part), then decodes from slots with
    holes between them, against transformers on the whole sequence."""
    model = load_model(tiny_model_dir).model
    runner = ModelRunner(model, num_slots=6, max_len=512, eos_token_id=None)
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 50257, (130,), generator=gen).tolist()
    ref = reference_logits(hf_model, prompt)
    with torch.inference_mode():
        for start in range(0, 130, 50):
            n = min(50, 130 - start)
            plan = AttentionPlan(0, prefills=(Prefill(0, n, 4, start),))
            hidden = model(torch.tensor(prompt[start : start + n]), torch.arange(start, start + n),
                           torch.full((n,), 4), plan, runner.cache)
            assert (model.logits(hidden) - ref[start : start + n]).abs().max() <= TOL

    other = torch.randint(0, 50257, (9,), generator=gen).tolist()
    seqs = [Sequence("a", prompt, SamplingParams()), Sequence("b", other, SamplingParams())]
    seqs[0].slot, seqs[1].slot = 4, 1  # slots 2 and 3 are holes in the range the decodes span
    with torch.inference_mode():
        plan = AttentionPlan(0, prefills=(Prefill(0, 9, 1, 0),))
        model(torch.tensor(other), torch.arange(9), torch.full((9,), 1), plan, runner.cache)
        for seq in seqs:
            seq.num_computed = seq.num_prompt_tokens
            seq.output_token_ids.append(int(reference_logits(hf_model, seq.prompt_token_ids)[-1].argmax()))
        for _ in range(3):
            plan = runner._plan(SchedulerOutput(decodes=seqs))
            logits = model.logits(model(torch.tensor([s.last_token_id for s in seqs]),
                                        torch.tensor([s.num_computed for s in seqs]),
                                        torch.tensor([s.slot for s in seqs]), plan, runner.cache))
            for seq, row in zip(seqs, logits, strict=True):
                expected = reference_logits(hf_model, seq.prompt_token_ids + seq.output_token_ids)[-1]
                assert (row - expected).abs().max() <= TOL
                seq.num_computed += 1
                seq.output_token_ids.append(int(expected.argmax()))
