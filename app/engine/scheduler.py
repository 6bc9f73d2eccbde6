"""Who runs in the next step: pure bookkeeping, no tensors.

Iteration-level batching: every step, running sequences that are decoding get one token each;
what is left of the step's token budget goes to prefill, in arrival order, first to sequences
already part-way through their prompt, then to waiting ones as cache slots allow. A long prompt
is thus prefilled in chunks between decode steps, and decodes are never starved.
"""

import heapq
from collections import deque
from dataclasses import dataclass, field

from app.engine.sequence import FinishReason, Sequence, Status


class QueueFullError(Exception):
    """The waiting queue holds max_queue requests already."""


@dataclass
class SchedulerOutput:
    decodes: list[Sequence] = field(default_factory=list)
    prefills: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, chunk length)

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
    def __init__(self, max_batch_size: int, max_num_batched_tokens: int, max_queue: int):
        if max_num_batched_tokens < max_batch_size:
            raise ValueError("max_num_batched_tokens must be at least max_batch_size, "
                             "so that every running sequence can decode in each step")
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_queue = max_queue
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self._free_slots = list(range(max_batch_size))  # a heap: the lowest slot is taken first

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a sequence, or raise QueueFullError when max_queue are waiting already."""
        if len(self.waiting) >= self.max_queue:
            raise QueueFullError(f"the queue is full ({self.max_queue} requests waiting)")
        self.waiting.append(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        out.decodes = [s for s in self.running if not s.in_prefill]
        budget = self.max_num_batched_tokens - len(out.decodes)
        for seq in self.running:
            if seq.in_prefill and budget > 0:
                budget -= self._add_chunk(out, seq, budget)
        while self.waiting and self._free_slots and budget > 0:
            seq = self.waiting.popleft()
            seq.slot = heapq.heappop(self._free_slots)
            seq.status = Status.RUNNING
            self.running.append(seq)
            budget -= self._add_chunk(out, seq, budget)
        return out

    @staticmethod
    def _add_chunk(out: SchedulerOutput, seq: Sequence, budget: int) -> int:
        n = min(seq.num_prompt_tokens - seq.num_computed, budget)
        out.prefills.append((seq, n))
        return n

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Take a sequence out of the queue or the batch and free its slot."""
        if seq.status is Status.FINISHED:
            return
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
        else:
            self.running.remove(seq)
            heapq.heappush(self._free_slots, seq.slot)
        seq.status = Status.FINISHED
        seq.finish_reason = reason

    def find(self, request_id: str) -> Sequence | None:
        for seq in (*self.running, *self.waiting):
            if seq.request_id == request_id:
                return seq
        return None

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of cache slots held by running sequences."""
        return len(self.running) / self.max_batch_size
