"""Who runs in the next step: pure bookkeeping, no tensors.

Iteration-level batching: every step, running sequences that are decoding get one token each;
what is left of the step's token budget goes to prefill, first to sequences already part-way
through their prompt, then to waiting ones as cache slots allow, in the waiting queue's weighted
fair order between tenants (fair_queue.py; first come, first served within a tenant). A long prompt
is thus prefilled in chunks between decode steps, and decodes are never starved.

The decoding sequences are kept as a list that changes only when one joins or leaves, with a
version number, so that the runner rebuilds its view of the batch only then.
"""

import heapq
from dataclasses import dataclass, field

from app.engine.fair_queue import FairQueue
from app.engine.sequence import FinishReason, Sequence, Status


@dataclass
class SchedulerOutput:
    decodes: list[Sequence] = field(default_factory=list)
    prefills: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, chunk length)
    decode_version: int = -1  # changes whenever the list of decoding sequences does

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


class Scheduler:
    def __init__(self, max_batch_size: int, max_num_batched_tokens: int):
        if max_num_batched_tokens < max_batch_size:
            raise ValueError("max_num_batched_tokens must be at least max_batch_size, "
                             "so that every running sequence can decode in each step")
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting = FairQueue()  # shared fairly between tenants (API keys or client addresses)
        self.prefilling: list[Sequence] = []  # in admission order
        self.decoding: list[Sequence] = []
        self.decode_version = 0
        self._free_slots = list(range(max_batch_size))  # a heap: the lowest slot is taken first
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
        self.waiting.append(seq)
        self._by_id[seq.request_id] = seq

    def find(self, request_id: str) -> Sequence | None:
        return self._by_id.get(request_id)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(decodes=self.decoding, decode_version=self.decode_version)
        budget = self.max_num_batched_tokens - len(self.decoding)
        for seq in self.prefilling:
            if budget <= 0:
                break
            budget -= self._add_chunk(out, seq, budget)
        while self.waiting and self._free_slots and budget > 0:
            seq = self.waiting.popleft()
            seq.slot = heapq.heappop(self._free_slots)
            seq.status = Status.PREFILL
            self.prefilling.append(seq)
            budget -= self._add_chunk(out, seq, budget)
        return out

    @staticmethod
    def _add_chunk(out: SchedulerOutput, seq: Sequence, budget: int) -> int:
        n = min(seq.num_prompt_tokens - seq.num_computed, budget)
        out.prefills.append((seq, n))
        return n

    def start_decoding(self, seq: Sequence) -> None:
        """Its prompt is computed: from the next step on it generates."""
        self.prefilling.remove(seq)
        self.decoding = [*self.decoding, seq]  # a new list: the one handed out by schedule() stays as it was
        seq.status = Status.DECODE
        self.decode_version += 1

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Take a sequence out of the queue or the batch and free its slot."""
        if seq.status is Status.FINISHED:
            return
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
        else:
            if seq.status is Status.DECODE:
                self.decoding = [s for s in self.decoding if s is not seq]
                self.decode_version += 1
            else:
                self.prefilling.remove(seq)
            heapq.heappush(self._free_slots, seq.slot)
        del self._by_id[seq.request_id]
        seq.status = Status.FINISHED
        seq.finish_reason = reason
