"""Runs one scheduled step on the model: packs the batch, runs the forward, samples, scores."""

from dataclasses import dataclass

import torch
from torch import Tensor

from app.engine.scheduler import SchedulerOutput
from app.engine.sequence import PromptScores, SamplingParams, Sequence, TokenLogprob
from app.model.gpt2 import GPT2, AttentionPlan, KVCache, Prefill
from app.model.sampling import Sampler, score_tokens

# prompt positions scored per lm_head call: bounds the [rows, V] float32 logits held at once
SCORE_ROWS = 256
# rows per pass after the lm_head: a [32, V] float32 block (6.4 MB for GPT-2) stays in cache
STATS_ROWS = 32


@dataclass
class SequenceResult:
    """What one step computed for one scheduled sequence."""

    token_id: int | None = None  # sampled when the sequence's prompt is done and it generates
    logprob: TokenLogprob | None = None
    prompt_scores: PromptScores | None = None  # for the prompt tokens this chunk predicted


class ModelRunner:
    """Owns the model, its KV cache (one slot per running sequence) and the sampler."""

    def __init__(self, model: GPT2, num_slots: int, max_len: int, eos_token_id: int | None, seed: int = 0,
                 vocab_size: int | None = None):
        param = next(model.parameters())
        self.model = model.eval()
        self.device, self.dtype = param.device, param.dtype
        self.cache = KVCache(model.config, num_slots, max_len, self.device, self.dtype)
        self.sampler = Sampler(eos_token_id, seed)
        # the tokens the tokenizer knows: a checkpoint may pad its embedding beyond them
        self.vocab_size = min(vocab_size or model.config.vocab_size, model.config.vocab_size)

    def logits(self, hidden: Tensor) -> Tensor:
        """[K, C] -> [K, vocab_size] float32 logits over the tokens the tokenizer knows."""
        return self.model.logits(hidden)[:, : self.vocab_size]

    @torch.inference_mode()
    def execute(self, batch: SchedulerOutput) -> list[SequenceResult]:
        """Compute one step. Returns one result per decode, then one per prefill chunk."""
        chunks = [(seq, 1) for seq in batch.decodes] + batch.prefills
        ids, positions, slots = [], [], []
        samplers: list[tuple[int, int]] = []  # (chunk index, packed row) of the rows to sample from
        spans: list[tuple[int, int, int, int]] = []  # (chunk index, packed row, count, first token) to score
        for i, (seq, n) in enumerate(chunks):
            start, row = seq.num_computed, len(ids)
            ids += seq.prompt_token_ids[start : start + n] if seq.in_prefill else [seq.last_token_id]
            positions += range(start, start + n)
            slots += [seq.slot] * n
            if not seq.in_prefill or (start + n == seq.num_prompt_tokens and seq.params.max_tokens):
                samplers.append((i, row + n - 1))
            if seq.in_prefill and seq.params.prompt_logprobs is not None:
                # position p predicts prompt token p + 1; no lm_head for tokens nobody asked about
                first = max(start, seq.params.prompt_logprobs_from - 1)
                count = min(start + n, seq.num_prompt_tokens - 1) - first
                if count > 0:
                    spans.append((i, row + first - start, count, first + 1))

        rows = [row for _, row in samplers] + [r for _, row, count, _ in spans for r in range(row, row + count)]
        dev = self.device
        hidden = self.model(torch.tensor(ids, device=dev), torch.tensor(positions, device=dev),
                            torch.tensor(slots, device=dev), self._plan(batch), self.cache,
                            torch.tensor(rows, device=dev, dtype=torch.long))

        results = [SequenceResult() for _ in chunks]
        if samplers:
            seqs = [chunks[i][0] for i, _ in samplers]
            tokens, logprobs = self.sampler.sample(self.logits(hidden[: len(samplers)]), seqs)
            for (i, _), token, logprob in zip(samplers, tokens, logprobs, strict=True):
                results[i].token_id, results[i].logprob = token, logprob
        offset = len(samplers)
        for i, _, count, first in spans:
            seq = chunks[i][0]
            targets = seq.prompt_token_ids[first : first + count]
            results[i].prompt_scores = self._score(hidden[offset : offset + count], targets, seq)
            offset += count
        return results

    def _plan(self, batch: SchedulerOutput) -> AttentionPlan:
        prefills, start = [], len(batch.decodes)
        for seq, n in batch.prefills:
            first = seq.num_computed  # query i sits at position first + i and sees keys 0..first + i
            mask = None if first == 0 else torch.ones(n, first + n, dtype=torch.bool).tril(first).to(self.device)
            prefills.append(Prefill(start, n, seq.slot, first, mask))
            start += n
        plan = AttentionPlan(num_decode=len(batch.decodes), prefills=tuple(prefills))
        if batch.decodes:
            # decodes read keys in place from the slot range they span (see attend_decodes)
            slots = [seq.slot for seq in batch.decodes]
            lo, hi = min(slots), max(slots) + 1
            rows = torch.tensor(slots) - lo
            last = torch.zeros(hi - lo, dtype=torch.long)  # rows without a decode look at position 0
            last[rows] = torch.tensor([seq.num_computed for seq in batch.decodes])
            span = int(last.max()) + 1
            allowed = torch.arange(span) <= last.unsqueeze(1)  # [R, span]
            plan.slot_lo = lo
            plan.decode_rows = rows.to(self.device)
            plan.decode_mask = allowed[:, None, None, :].to(self.device)
        return plan

    def _score(self, hidden: Tensor, targets: list[int], seq: Sequence) -> PromptScores:
        """Score `targets` given hidden states [n, C] of the positions before each.

        The lm_head runs on SCORE_ROWS rows at a time; what follows it (log-softmax, ranks, top-k,
        entropy) on STATS_ROWS-row slices, whose [rows, V] temporaries stay in cache (and, on a CPU,
        under the allocator's mmap threshold, which otherwise costs fresh page faults per call)."""
        k, stats = seq.params.prompt_logprobs, seq.params.prompt_stats
        target_ids = torch.tensor(targets, device=self.device)
        scores = PromptScores()
        for s in range(0, len(targets), SCORE_ROWS):
            logits = self.logits(hidden[s : s + SCORE_ROWS])  # [rows, V]
            for u in range(0, logits.shape[0], STATS_ROWS):
                logprobs = logits[u : u + STATS_ROWS].log_softmax(-1)  # [rows, V]
                ts = score_tokens(logprobs, target_ids[s + u : s + u + STATS_ROWS], k)
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

    @torch.inference_mode()
    def warm_up(self, num_tokens: int = 16) -> None:
        """One prefill and one decode through slot 0, so first requests do not pay for lazy init."""
        seq = Sequence("warm-up", [0] * num_tokens, SamplingParams(max_tokens=2, temperature=0.0, logprobs=1,
                                                                  prompt_logprobs=1))
        seq.slot = 0
        self.execute(SchedulerOutput(prefills=[(seq, num_tokens)]))
        seq.num_computed = num_tokens
        seq.output_token_ids.append(0)
        self.execute(SchedulerOutput(decodes=[seq]))
