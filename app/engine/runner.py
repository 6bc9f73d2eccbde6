"""Runs one scheduled step on the model: packs the batch, runs the forward, samples, scores.

The batch persists between steps: each cache slot's next input token and position live in
arrays, updated from the step's own results, and the decode rows' slots, attention layout and
sampling plan are rebuilt only when the decoding sequences change (the scheduler's version). A
steady decode step therefore gathers its inputs with a few array operations, whatever the batch
size. Prefill chunks (a prompt's tokens) are packed from their sequences.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from app.engine.graphs import StaticDecoder
from app.engine.protocol import PromptScores, SamplingParams
from app.engine.readout import Reader
from app.engine.sampler import Sampler
from app.engine.scheduler import SchedulerOutput, StepResult
from app.engine.sequence import Sequence
from app.model.gpt2 import GPT2, AttentionPlan, KVCache, Prefill
from app.model.sampling import score_tokens

# prompt positions scored per lm_head call: a [32, V] float32 block (6.4 MB for GPT-2) stays in cache
# while the log-softmax, ranks and statistics read it, and blocks of one size let the allocator
# reuse their memory (larger, varied blocks made the engine's RSS creep up by hundreds of MB)
SCORE_ROWS = 32
# sampled rows per lm_head call: the [64, V] float32 logits (13 MB for GPT-2) are sampled while they
# are still in cache, and stay under glibc's largest mmap threshold (32 MiB), above which every step
# would allocate them afresh and page-fault them in (at 256 rows: ~3x the time of four 64-row blocks)
SAMPLE_ROWS = 64


@dataclass
class DecodeLayout:
    """Where the decoding sequences sit: kept until they change (SchedulerOutput.decode_version)."""

    version: int
    slots: np.ndarray  # [B] cache slot of each decode row
    slots_t: Tensor  # the same, on the device
    slot_lo: int  # decode attention reads the slot range [slot_lo, slot_lo + R) in place
    num_rows: int  # R
    rows: np.ndarray  # [B] each decode's row within that range
    rows_t: Tensor


@dataclass
class Inputs:
    """One step's packed inputs, as numpy pieces concatenated once."""

    ids: list[np.ndarray]
    positions: list[np.ndarray]
    slots: list[np.ndarray]
    sampled: list[np.ndarray]  # the slot of each row to sample, decodes first
    spans: list[tuple[int, int, int, int]] = field(default_factory=list)  # (chunk, packed row, count, first target)
    logit_rows: list[int] | None = None  # packed rows whose hidden states come back (None: all)
    num_sampled: int = 0

    @property
    def sampled_slots(self) -> np.ndarray:
        return np.concatenate(self.sampled)

    def tensors(self, device) -> tuple[Tensor, Tensor, Tensor]:
        """input ids, positions, slots: [T] each."""
        return tuple(torch.from_numpy(np.concatenate(a)).to(device) for a in (self.ids, self.positions, self.slots))


def samples(seq: Sequence, start: int, n: int) -> bool:
    """Does a chunk of tokens [start, start + n) of this sequence end with a token to sample?"""
    return start + n >= seq.num_prompt_tokens and seq.params.max_tokens > 0


class ModelRunner:
    """Owns the model, its KV cache (one slot per running sequence) and the sampler."""

    def __init__(self, model: GPT2, num_slots: int, max_len: int, eos_token_id: int | None,
                 vocab_size: int | None = None, static_decode: bool = False):
        param = next(model.parameters())
        self.model = model.eval()
        self.device, self.dtype = param.device, param.dtype
        # one slot more than sequences use: fixed-shape decode steps write their padding rows there
        self.cache = KVCache(model.config, num_slots + static_decode, max_len, self.device, self.dtype)
        # the tokens the tokenizer knows: a checkpoint may pad its embedding beyond them
        self.vocab_size = min(vocab_size or model.config.vocab_size, model.config.vocab_size)
        self.sampler = Sampler(num_slots, self.vocab_size, eos_token_id, self.device)
        self.reader = Reader(self.model, self.logits, self.device)  # explain and embed (readout.py)
        self.next_token = np.zeros(num_slots, np.int64)  # each slot's next input token (when decoding)
        self.next_pos = np.zeros(num_slots, np.int64)  # ... and its position: the tokens cached so far
        self.static = StaticDecoder(self.model, self.cache, self.vocab_size) if static_decode else None
        self._decode: DecodeLayout | None = None

    def logits(self, hidden: Tensor) -> Tensor:
        """[K, C] -> [K, vocab_size] float32 logits over the tokens the tokenizer knows."""
        return self.model.logits(hidden)[:, : self.vocab_size]

    @torch.inference_mode()
    def execute(self, batch: SchedulerOutput) -> StepResult:
        """Compute one step: one token for each decode, the next chunk of each prefill."""
        self._admit(batch)
        layout = self._decode_layout(batch)
        result = StepResult()
        if self.static is not None and not batch.prefills:  # a pure decode step: fixed shapes (graphs.py)
            slots = layout.slots
            logits = self.static.run(slots, self.next_token[slots], self.next_pos[slots], layout.slots_t)
            self.next_pos[slots] += 1
            self._sample(lambda lo, hi: logits[lo:hi], slots, result)
            return result
        inputs = self._pack(batch, layout)
        reading = self.reader.plan(batch.prefills, len(batch.decodes))  # hidden states explain and embed read
        if reading.final_rows:
            inputs.logit_rows += reading.final_rows
        hidden = self.model(*inputs.tensors(self.device), self._plan(batch, layout), self.cache,
                            None if inputs.logit_rows is None else
                            torch.tensor(inputs.logit_rows, dtype=torch.long, device=self.device),
                            reading.capture)
        self.next_pos[layout.slots] += 1
        self._sample(lambda lo, hi: self.logits(hidden[lo:hi]), inputs.sampled_slots, result)
        scored = self._score(batch, hidden[inputs.num_sampled :], inputs.spans, result)
        if reading.reads:
            result.readouts = self.reader.collect(reading, hidden[inputs.num_sampled + scored :], self.cache)
        return result

    def _admit(self, batch: SchedulerOutput) -> None:
        """Sequences taking a slot: copy the prefix they reuse, set up their sampling state."""
        k, v = self.cache.k, self.cache.v
        for source, slot, n in batch.copies:
            k[:, slot, :, :n] = k[:, source, :, :n]
            v[:, slot, :, :n] = v[:, source, :, :n]
        for seq in batch.admitted:
            self.sampler.add(seq.slot, seq.params, seq.seed, seq.prompt_token_ids, seq.output_token_ids)

    def _pack(self, batch: SchedulerOutput, layout: DecodeLayout) -> Inputs:
        """The step's packed tokens: decodes first (from the persistent per-slot arrays), then each
        prefill chunk; which rows are sampled and which prompt positions are scored."""
        B = len(batch.decodes)
        inputs = Inputs([self.next_token[layout.slots]], [self.next_pos[layout.slots]], [layout.slots],
                        [layout.slots])
        sample_rows = list(range(B)) if batch.prefills else None  # None: every row, in order
        row = B
        for i, (seq, n) in enumerate(batch.prefills):
            start = seq.num_computed
            inputs.ids.append(np.asarray(seq.prompt_token_ids[start : start + n], np.int64))
            inputs.positions.append(np.arange(start, start + n))
            inputs.slots.append(np.full(n, seq.slot))
            if samples(seq, start, n):
                sample_rows.append(row + n - 1)
                inputs.sampled.append(np.array([seq.slot]))
            if seq.params.prompt_logprobs is not None:
                # position p predicts prompt token p + 1; no lm_head for tokens nobody asked about
                first = max(start, seq.params.prompt_logprobs_from - 1)
                count = min(start + n, seq.num_prompt_tokens - 1) - first
                if count > 0:
                    inputs.spans.append((i, row + first - start, count, first + 1))
            self.next_pos[seq.slot] = start + n
            row += n
        inputs.num_sampled = B if sample_rows is None else len(sample_rows)
        if sample_rows is not None or inputs.spans:
            inputs.logit_rows = [*(sample_rows or range(B)),
                                 *(r for _, r, count, _ in inputs.spans for r in range(r, r + count))]
        return inputs

    def _sample(self, logits: Callable[[int, int], Tensor], sampled_slots: np.ndarray, result: StepResult) -> None:
        """A token for each sampled row (the sequence in slot sampled_slots[i]), SAMPLE_ROWS rows at
        a time; logits(lo, hi) gives rows lo..hi-1 [hi - lo, V] float32."""
        num_sampled = len(sampled_slots)
        if not num_sampled:
            return
        bounds = [(lo, min(lo + SAMPLE_ROWS, num_sampled)) for lo in range(0, num_sampled, SAMPLE_ROWS)]
        blocks = [self.sampler.sample(logits(lo, hi), sampled_slots[lo:hi]) for lo, hi in bounds]
        tokens = np.concatenate([t for t, _ in blocks])
        self.next_token[sampled_slots] = tokens
        result.tokens = tokens.tolist()
        if any(lp is not None for _, lp in blocks):
            result.logprobs = [x for (t, lp) in blocks for x in (lp if lp is not None else [None] * len(t))]

    def _score(self, batch: SchedulerOutput, hidden: Tensor, spans: list[tuple[int, int, int, int]],
               result: StepResult) -> int:
        """Prompt scores of each chunk's asked positions; hidden: [sum of counts, C], in span order.
        Returns the number of rows scored."""
        offset = 0
        for i, _, count, first in spans:
            seq = batch.prefills[i][0]
            targets = seq.prompt_token_ids[first : first + count]
            result.prompt_scores[i] = self._score_span(hidden[offset : offset + count], targets, seq.params)
            offset += count
        return offset

    def _decode_layout(self, batch: SchedulerOutput) -> DecodeLayout:
        if self._decode is None or self._decode.version != batch.decode_version:
            slots = np.fromiter((seq.slot for seq in batch.decodes), np.int64, len(batch.decodes))
            lo, hi = (int(slots.min()), int(slots.max()) + 1) if len(slots) else (0, 0)
            rows = slots - lo
            self._decode = DecodeLayout(batch.decode_version, slots, torch.from_numpy(slots).to(self.device), lo,
                                        hi - lo, rows, torch.from_numpy(rows).to(self.device))
        return self._decode

    def _plan(self, batch: SchedulerOutput, layout: DecodeLayout) -> AttentionPlan:
        prefills, start = [], len(batch.decodes)
        for seq, n in batch.prefills:
            first = seq.num_computed  # query i sits at position first + i and sees keys 0..first + i
            mask = None if first == 0 else torch.ones(n, first + n, dtype=torch.bool).tril(first).to(self.device)
            prefills.append(Prefill(start, n, seq.slot, first, mask))
            start += n
        plan = AttentionPlan(num_decode=len(batch.decodes), prefills=tuple(prefills))
        if batch.decodes:
            # decodes read keys in place from the slot range they span (see attend_decodes); rows of
            # the range without a decode look at position 0
            last = np.zeros(layout.num_rows, np.int64)
            last[layout.rows] = self.next_pos[layout.slots]
            span = int(last.max()) + 1
            allowed = torch.arange(span) <= torch.from_numpy(last).unsqueeze(1)  # [R, span]
            plan.slot_lo = layout.slot_lo
            plan.decode_rows = layout.rows_t
            plan.decode_mask = allowed[:, None, None, :].to(self.device)
        return plan

    def _score_span(self, hidden: Tensor, targets: list[int], params: SamplingParams) -> PromptScores:
        """Score `targets` given hidden states [n, C] of the positions before each, SCORE_ROWS at a time."""
        k, stats = params.prompt_logprobs, params.prompt_stats
        target_ids = torch.tensor(targets, device=self.device)
        scores = PromptScores()
        for s in range(0, len(targets), SCORE_ROWS):
            logprobs = self.logits(hidden[s : s + SCORE_ROWS]).log_softmax(-1)  # [rows, V]
            ts = score_tokens(logprobs, target_ids[s : s + SCORE_ROWS], k)
            scores.token_logprobs += ts.logprobs
            scores.ranks += ts.ranks
            scores.top += ts.top
            if stats:
                p_log_p = logprobs.exp().mul_(logprobs)
                entropy = -p_log_p.sum(-1)
                second = p_log_p.mul_(logprobs).sum(-1)  # E[(log p)^2]
                scores.entropy += entropy.tolist()
                scores.logprob_variance += (second - entropy.square()).clamp(min=0).tolist()
        return scores

    def warm_up(self, num_tokens: int = 16) -> None:
        """One prefill and one decode through slot 0, so first requests do not pay for lazy init."""
        seq = Sequence("warm-up", [0] * num_tokens, SamplingParams(max_tokens=2, temperature=0.0, logprobs=1,
                                                                  prompt_logprobs=1))
        seq.slot = 0
        self.execute(SchedulerOutput(prefills=[(seq, num_tokens)], decode_version=-1, admitted=[seq]))
        seq.num_computed = num_tokens
        seq.output_token_ids.append(0)
        self.execute(SchedulerOutput(decodes=[seq], decode_version=-2))
        self._decode = None
        if self.static is not None and self.device.type == "cuda":
            self.static.capture()
