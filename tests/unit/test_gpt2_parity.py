"""Our forward equals transformers' GPT2LMHeadModel: whole prompts, chunked prompts, decodes from
scattered cache slots, and decodes and a prefill chunk sharing one forward pass."""

import torch

from app.engine.protocol import SamplingParams
from app.engine.runner import ModelRunner
from app.engine.scheduler import SchedulerOutput
from app.engine.sequence import Sequence
from app.model.loader import load_model

TOL = 1e-4


def reference_logits(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0]  # [n, V]


def step_logits(runner: ModelRunner, decodes: list[Sequence], prefills: list[tuple[Sequence, int]]) -> list:
    """One packed forward, as runner.execute packs it, returning every token's logits per chunk
    (and advancing the sequences as the engine would)."""
    chunks = [(seq, 1) for seq in decodes] + prefills
    ids, positions, slots = [], [], []
    for seq, n in chunks:
        start = seq.num_computed
        ids += seq.prompt_token_ids[start : start + n] if seq.in_prefill else [seq.last_token_id]
        positions += range(start, start + n)
        slots += [seq.slot] * n
    for seq in decodes:
        runner.next_pos[seq.slot] = seq.num_computed
    batch = SchedulerOutput(decodes=decodes, prefills=prefills)
    runner._decode = None  # these decodes are new to it
    plan = runner._plan(batch, runner._decode_layout(batch))
    dev = runner.device
    with torch.inference_mode():
        logits = runner.model.logits(runner.model(torch.tensor(ids, device=dev), torch.tensor(positions, device=dev),
                                                  torch.tensor(slots, device=dev), plan, runner.cache)).cpu()
    out, row = [], 0
    for seq, n in chunks:
        out.append(logits[row : row + n])
        row += n
        seq.num_computed += n
    return out


def sequences(prompts: list[list[int]], slots: list[int]) -> list[Sequence]:
    seqs = [Sequence(str(i), p, SamplingParams()) for i, p in enumerate(prompts)]
    for seq, slot in zip(seqs, slots, strict=True):
        seq.slot = slot
    return seqs


def greedy_next(hf_model, seq: Sequence) -> None:
    seq.output_token_ids.append(int(reference_logits(hf_model, seq.prompt_token_ids + seq.output_token_ids)[-1]
                                    .argmax()))


def assert_decodes_match(hf_model, seqs: list[Sequence], logits: list) -> None:
    """Each decode's logits equal transformers' on the whole sequence; then append its greedy token."""
    for seq, ours in zip(seqs, logits, strict=True):
        expected = reference_logits(hf_model, seq.prompt_token_ids + seq.output_token_ids)[-1]
        assert (ours[0] - expected).abs().max() <= TOL
        greedy_next(hf_model, seq)


def random_prompts(seed: int, lengths: tuple[int, ...]) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in lengths]


def test_prefill_and_decode_match_transformers(tiny_model_dir, hf_model):
    runner = ModelRunner(load_model(tiny_model_dir, dtype="float32").model, num_slots=4, max_len=512, eos_token_id=None)
    prompts = random_prompts(1, (1, 7, 33, 130))
    seqs = sequences(prompts, [0, 1, 2, 3])
    for seq, ours in zip(seqs, step_logits(runner, [], [(s, s.num_prompt_tokens) for s in seqs]), strict=True):
        assert (ours - reference_logits(hf_model, seq.prompt_token_ids)).abs().max() <= TOL
        greedy_next(hf_model, seq)
    for _ in range(6):  # token-by-token decode, all four in each step
        assert_decodes_match(hf_model, seqs, step_logits(runner, seqs, []))


def test_chunked_prefill_and_scattered_slots_match_transformers(tiny_model_dir, hf_model):
    runner = ModelRunner(load_model(tiny_model_dir, dtype="float32").model, num_slots=6, max_len=512, eos_token_id=None)
    long, short = random_prompts(2, (130, 9))
    seqs = sequences([long, short], [4, 1])  # slots 2 and 3 are holes in the range the decodes span
    ref = reference_logits(hf_model, long)
    for start in range(0, 130, 50):  # the long prompt in chunks, each attending to its cached part
        (ours,) = step_logits(runner, [], [(seqs[0], min(50, 130 - start))])
        assert (ours - ref[start : start + 50]).abs().max() <= TOL
    step_logits(runner, [], [(seqs[1], 9)])
    for seq in seqs:
        greedy_next(hf_model, seq)
    for _ in range(3):
        assert_decodes_match(hf_model, seqs, step_logits(runner, seqs, []))


def test_decodes_and_prefill_chunks_in_one_forward_match_transformers(tiny_model_dir, hf_model):
    runner = ModelRunner(load_model(tiny_model_dir, dtype="float32").model, num_slots=8, max_len=512, eos_token_id=None)
    a, b, c = random_prompts(3, (20, 45, 90))
    decoding = sequences([a, b], [5, 2])
    step_logits(runner, [], [(s, s.num_prompt_tokens) for s in decoding])
    for seq in decoding:
        greedy_next(hf_model, seq)
    (prefilling,) = sequences([c], [3])
    prefilling.request_id = "c"
    ref = reference_logits(hf_model, c)
    for start in (0, 40):  # two mixed steps: decodes plus a chunk that starts the prompt, then one that continues it
        n = 40 if start == 0 else 50
        *decoded, chunk = step_logits(runner, decoding, [(prefilling, n)])
        assert (chunk - ref[start : start + n]).abs().max() <= TOL
        assert_decodes_match(hf_model, decoding, decoded)
