"""Who runs in the next step, and what a step's results change: pure bookkeeping, no tensors.

Iteration-level batching: every step, running sequences that are decoding get one token each;
what is left of the step's token budget goes to prefill, first to sequences already part-way
through their prompt, then to waiting ones as cache slots allow, in the waiting queue's weighted
fair order between tenants (fair_queue.py; first come, first served within a tenant). A long prompt
is thus prefilled in chunks between decode steps, and decodes are never starved.

A waiting sequence starts from the longest prefix of its prompt whose keys and values a slot
already holds (prefix_cache.py); one whose prefix a running prefill is computing waits for that
prefill rather than computing it twice. Among the first LOOKAHEAD waiting sequences that can go,
the one reusing the most goes first; the first of them is overtaken at most LOOKAHEAD times.

After the step, `update()` appends the new tokens, applies the stop rule and turns finished
prompts into decoding sequences. The decoding sequences are kept as a list that changes only when
one joins or leaves, with a version number, so that the runner rebuilds its view of the batch only
then.
"""

import bisect
import math
import time
from dataclasses import dataclass, field

from app.engine.fair_queue import FairQueue
from app.engine.prefix_cache import BLOCK, PrefixCache, Reuse, reused_scores
from app.engine.protocol import FinishReason, PromptScores, Readout, RequestOutput, RequestStats
from app.engine.sequence import Sequence, Status

LOOKAHEAD = 8  # waiting sequences considered for each free slot


@dataclass
class SchedulerOutput:
    decodes: list[Sequence] = field(default_factory=list)
    prefills: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, chunk length)
    decode_version: int = -1  # changes whenever the list of decoding sequences does
    admitted: list[Sequence] = field(default_factory=list)  # took a slot this step
    copies: list[tuple[int, int, int]] = field(default_factory=list)  # KV (source slot, slot, tokens), in order
    queried_tokens: int = 0  # prompt tokens of the admitted sequences
    hit_tokens: int = 0  # ... of which reused from the cache
    evictions: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(n for _, n in self.prefills)

    @property
    def is_empty(self) -> bool:
        return not (self.decodes or self.prefills)

    @property
    def phase(self) -> str:
        """prefill, decode or mixed: the label of this step's duration metric."""
        if self.decodes and self.prefills:
            return "mixed"
        return "decode" if self.decodes else "prefill"


@dataclass
class StepResult:
    """What the runner computed for a SchedulerOutput: a token for each sampled sequence (the
    decodes, in order, then the prefill chunks that finish their prompt and generate) and scores
    for prefill chunks."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list | None = None  # TokenLogprob or None, aligned with tokens, when any row asked
    prompt_scores: dict[int, PromptScores] = field(default_factory=dict)  # by prefill chunk index
    readouts: dict[int, Readout] = field(default_factory=dict)  # likewise, for explain and embed (readout.py)


class Scheduler:
    def __init__(self, max_batch_size: int, max_num_batched_tokens: int, max_model_len: int,
                 eos_token_id: int | None = None, prefix_caching: bool = True, lens_cost: float = 0.0):
        if max_num_batched_tokens < max_batch_size:
            raise ValueError("max_num_batched_tokens must be at least max_batch_size, "
                             "so that every running sequence can decode in each step")
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_id = eos_token_id
        self.lens_cost = lens_cost  # tokens' worth of work one position's logit lens adds (lens_cost())
        self.cache = PrefixCache(max_batch_size, prefix_caching)
        self.waiting = FairQueue()  # shared fairly between tenants (API keys or client addresses)
        self.prefilling: list[Sequence] = []  # in admission order
        self.decoding: list[Sequence] = []
        self.decode_version = 0
        self._by_id: dict[str, Sequence] = {}

    @property
    def num_running(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + self.num_running

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of cache slots held by running sequences."""
        return self.num_running / self.max_batch_size

    def add(self, seq: Sequence) -> None:
        """Queue a sequence (admission control happens before it reaches the engine)."""
        if seq.request_id in self._by_id:
            raise ValueError(f"request id {seq.request_id!r} is already queued or running")
        seq.stop_ids = seq.params.stop_ids(self.eos_token_id)
        self.waiting.append(seq)
        self._by_id[seq.request_id] = seq

    def find(self, request_id: str) -> Sequence | None:
        return self._by_id.get(request_id)

    # --- before the step -----------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(decodes=self.decoding, decode_version=self.decode_version)
        budget = self.max_num_batched_tokens - len(self.decoding)
        for seq in self.prefilling:
            if budget <= 0:
                break
            budget -= self._add_chunk(out, seq, budget)
        evictions, deferred = self.cache.evictions, set()
        while self.waiting and self.cache.free and budget > 0:
            choice = self._next_waiting(deferred)
            if choice is None:
                break
            budget -= self._admit(out, *choice, budget)
        out.evictions = self.cache.evictions - evictions
        return out

    def _next_waiting(self, deferred: set[Sequence]) -> tuple[Sequence, Reuse | None] | None:
        """The waiting sequence to admit next and what it reuses; None if every one in sight waits
        for a running prefill to compute its prefix."""
        first = best = None
        considered = 0
        for seq in self.waiting:
            if seq in deferred:
                continue
            reuse, later = self.cache.lookup(seq)
            now = reuse.length if reuse else 0
            if later >= now + BLOCK:  # a running prefill will hold more of it soon
                deferred.add(seq)
                continue
            if first is None:
                first = best = (seq, reuse)
                if seq.overtaken >= LOOKAHEAD:
                    break
            elif now > (best[1].length if best[1] else 0):
                best = (seq, reuse)
            considered += 1
            if considered == LOOKAHEAD:
                break
        if best is not first:
            first[0].overtaken += 1
        return best

    def _admit(self, out: SchedulerOutput, seq: Sequence, reuse: Reuse | None, budget: int) -> int:
        # a compact slot range keeps decode attention from reading holes, unless every free slot is
        # about to be taken anyway
        compact = len(self.waiting) < len(self.cache.free)
        self.waiting.take(seq)
        if reuse is not None:
            source = self.cache.slots[reuse.source].seq  # (all of `reuse.alike` hold the same prefix)
            seq.prompt_scores = reused_scores(seq, source, reuse.length)
            seq.num_computed = seq.num_cached_tokens = reuse.length
        seq.slot, reuse = self.cache.allocate(seq, reuse, compact)
        if reuse is not None and reuse.source != seq.slot:
            out.copies.append((reuse.source, seq.slot, reuse.length))
        seq.status = Status.PREFILL
        self.prefilling.append(seq)
        out.admitted.append(seq)
        out.queried_tokens += seq.num_prompt_tokens
        out.hit_tokens += seq.num_cached_tokens
        return self._add_chunk(out, seq, budget)

    def _add_chunk(self, out: SchedulerOutput, seq: Sequence, budget: int) -> int:
        """Schedule the longest next chunk of the prompt that fits `budget` (one token at least, so
        a prompt always advances); returns its cost: its tokens, plus lens_cost for each position
        in it that `explain` reads through the logit lens (L + 1 unembeddings each)."""
        start = seq.num_computed
        n = min(seq.num_prompt_tokens - start, budget)
        cost = n
        explain = seq.params.explain
        if explain is not None and explain.lens_top_k and self.lens_cost:
            positions, first = explain.positions, bisect.bisect_left(explain.positions, start)

            def cost_of(m: int) -> float:
                return m + self.lens_cost * (bisect.bisect_left(positions, start + m) - first)

            lo, hi = 1, n
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if cost_of(mid) <= budget else (lo, mid - 1)
            n, cost = lo, math.ceil(cost_of(lo))
        out.prefills.append((seq, n))
        return cost

    # --- after the step ------------------------------------------------------------------------
    def update(self, batch: SchedulerOutput, result: StepResult) -> tuple[list[RequestOutput], list[float]]:
        """Apply a step's results: new tokens, finished prompts, stops. Returns one output per
        sequence that has news, and the decodes' inter-token latencies."""
        now = time.monotonic()
        tokens, logprobs = result.tokens, result.logprobs
        outputs, latencies = [], []
        for i, seq in enumerate(batch.decodes):
            token = tokens[i]
            seq.num_computed += 1
            latencies.append(now - seq.last_token_time)
            seq.last_token_time = now
            seq.output_token_ids.append(token)
            self._check_stop(seq, token, now)
            outputs.append(RequestOutput(seq.request_id, [token], [logprobs[i]] if logprobs and logprobs[i] else [],
                                         None, seq.finish_reason, None, len(seq.output_token_ids), seq.stats))
        row = len(batch.decodes)
        for i, (seq, n) in enumerate(batch.prefills):
            seq.num_computed += n
            self.cache.computed(seq)
            seq.readout = result.readouts.get(i, seq.readout)
            scores = result.prompt_scores.get(i)
            if scores is not None:
                if seq.prompt_scores is None:
                    seq.prompt_scores = scores
                else:
                    seq.prompt_scores.extend(scores)
            if seq.in_prefill:
                continue
            if seq.prompt_scores is None and seq.params.prompt_logprobs is not None:
                seq.prompt_scores = PromptScores()  # a one-token prompt has nothing to score
            if not seq.params.max_tokens:  # a prompt-only request: scored, nothing to generate
                self.finish(seq, FinishReason.LENGTH, now)
                outputs.append(RequestOutput(seq.request_id, prompt_scores=seq.prompt_scores,
                                             finish_reason=seq.finish_reason, stats=seq.stats, readout=seq.readout))
                continue
            token, logprob = tokens[row], logprobs[row] if logprobs else None
            row += 1
            seq.first_token_time = seq.last_token_time = now
            seq.output_token_ids.append(token)
            self._start_decoding(seq)
            self._check_stop(seq, token, now)
            outputs.append(RequestOutput(seq.request_id, [token], [logprob] if logprob else [], seq.prompt_scores,
                                         seq.finish_reason, None, 1, seq.stats, seq.readout))
        return outputs, latencies

    def fail(self, batch: SchedulerOutput, error: str) -> list[RequestOutput]:
        """The step raised: its sequences end with an error (their slots' rows may be half written,
        so nothing of them is kept for reuse)."""
        outputs, now = [], time.monotonic()
        for seq in [*batch.decodes, *(s for s, _ in batch.prefills)]:
            if seq.finish_reason is None:
                self.finish(seq, FinishReason.ERROR, now)
                outputs.append(RequestOutput(seq.request_id, finish_reason=FinishReason.ERROR, error=error,
                                             num_output_tokens=len(seq.output_token_ids), stats=seq.stats))
        return outputs

    def _check_stop(self, seq: Sequence, token_id: int, now: float) -> None:
        if token_id in seq.stop_ids:
            self.finish(seq, FinishReason.STOP, now)
        elif len(seq.output_token_ids) >= seq.params.max_tokens or seq.num_tokens >= self.max_model_len:
            self.finish(seq, FinishReason.LENGTH, now)

    def _start_decoding(self, seq: Sequence) -> None:
        """Its prompt is computed: from the next step on it generates."""
        self.prefilling.remove(seq)
        self.decoding = [*self.decoding, seq]  # a new list: the one handed out by schedule() stays as it was
        seq.status = Status.DECODE
        self.decode_version += 1

    def finish(self, seq: Sequence, reason: FinishReason, now: float | None = None) -> None:
        """Take a sequence out of the queue or the batch, free its slot, and write its stats."""
        if seq.status is Status.FINISHED:
            return
        now = time.monotonic() if now is None else now
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
        else:
            if seq.status is Status.DECODE:
                self.decoding = [s for s in self.decoding if s is not seq]
                self.decode_version += 1
            else:
                self.prefilling.remove(seq)
            self.cache.release(seq, keep=reason is not FinishReason.ERROR)
        del self._by_id[seq.request_id]
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        scored = len(seq.prompt_scores.token_logprobs) if seq.prompt_scores else 0
        ttft = seq.first_token_time - seq.arrival_time if seq.first_token_time else None
        seq.stats = RequestStats(seq.request_id, seq.num_prompt_tokens, len(seq.output_token_ids),
                                 (seq.scheduled_time or now) - seq.arrival_time, ttft, now - seq.arrival_time,
                                 reason.value, scored, seq.num_cached_tokens)


def lens_cost(num_layers: int, width: int, vocab_size: int) -> float:
    """Tokens' worth of compute one position's logit lens adds: L + 1 unembeddings (V x C each),
    against a token's forward (~12 L C^2 in the blocks, plus its own V x C unembedding). GPT-2
    small: 4.1."""
    return (num_layers + 1) * vocab_size * width / (12 * num_layers * width * width + vocab_size * width)
