"""Decode steps of fixed shapes, captured once as CUDA graphs and replayed (GPT2_CUDA_GRAPHS).

On a GPU, GPT-2's decode step is a few hundred small kernels; launched one by one from Python,
the launches, not the GPU, bound it. A CUDA graph replays them all with one call, but only for
the shapes, and the memory, it was captured with. So a pure decode step (no prefill chunk) is
given fixed shapes:

- its rows are the cache slots [0, R), R the smallest batch bucket holding the highest decoding
  slot: a slot that is not decoding is a padding row (token 0 at position 0, its keys and values
  written to a spare slot that nothing reads);
- its keys are the positions [0, N), N the smallest key bucket past the longest row;
- its inputs live in one preallocated device buffer [3, slots] (token, position, slot to write),
  filled from the host with one copy per step; its float32 logits land in a preallocated
  [slots, vocab] buffer.

`StaticDecoder.run` works the same with or without graphs: captured (on CUDA, during warm-up,
before the server reports ready), a bucket's graph is replayed; otherwise the same forward runs
eagerly, which is how the CPU tests check it against the dynamic path. Prefill and mixed steps
stay eager (runner.py). The sampler runs eagerly on the logits: one small read-back per step.
"""

import logging
import time

import numpy as np
import torch
from torch import Tensor

from app.model.gpt2 import GPT2, AttentionPlan, KVCache

log = logging.getLogger(__name__)


def batch_buckets(max_rows: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 up to 64 and of 16 beyond, ending at max_rows."""
    sizes = [1, 2, 4, 8, *range(16, 65, 8), *range(80, max_rows + 1, 16)]
    return sorted({s for s in sizes if s < max_rows} | {max_rows})


def key_buckets(max_len: int) -> list[int]:
    """Powers of two from 64, ending at max_len."""
    sizes, n = [], 64
    while n < max_len:
        sizes.append(n)
        n *= 2
    return [*sizes, max_len]


def bucket(n: int, buckets: list[int]) -> int:
    """The smallest bucket holding n (buckets ascending; n at most the last)."""
    return next(b for b in buckets if b >= n)


class StaticDecoder:
    """Fixed-shape decode forwards over the runner's model and cache, optionally as CUDA graphs.
    The cache must have one slot more than the sequences use (`spare`): padding rows write there."""

    def __init__(self, model: GPT2, cache: KVCache, vocab_size: int):
        self.model, self.cache, self.vocab_size = model, cache, vocab_size
        self.spare = cache.num_slots - 1
        device = model.wte.weight.device
        self.rows, self.keys = batch_buckets(self.spare), key_buckets(cache.max_len)
        pinned = device.type == "cuda"
        self._host = torch.zeros((3, self.spare), dtype=torch.long, pin_memory=pinned)  # token, position, slot
        self._inputs = torch.zeros((3, self.spare), dtype=torch.long, device=device)
        self._inputs[2] = self.spare
        self._logits = torch.zeros((self.spare, vocab_size), dtype=torch.float32, device=device)
        self._positions = torch.arange(cache.max_len, device=device)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}

    @property
    def captured(self) -> list[int]:
        """The batch buckets captured as graphs (empty: none)."""
        return sorted({rows for rows, _ in self.graphs})

    def run(self, slots: np.ndarray, tokens: np.ndarray, positions: np.ndarray, slots_t: Tensor) -> Tensor:
        """One decode step for the sequences in `slots` (their next input tokens and positions);
        returns their float32 logits [B, vocab], in the order of `slots` (slots_t: the same, on the
        device). Writes their keys and values into the cache."""
        R = bucket(int(slots.max()) + 1, self.rows)
        N = bucket(int(positions.max()) + 1, self.keys)
        host = self._host.numpy()
        host[:, :R] = 0
        host[2, :R] = self.spare
        host[0, slots], host[1, slots], host[2, slots] = tokens, positions, slots
        self._inputs[:, :R].copy_(self._host[:, :R], non_blocking=True)
        graph = self.graphs.get((R, N))
        if graph is not None:
            graph.replay()
        else:
            self._forward(R, N)
        return self._logits.index_select(0, slots_t)

    def _forward(self, R: int, N: int) -> None:
        ids, positions, write = self._inputs[:, :R]
        # row r may attend to keys 0..positions[r] of slot r (a padding row: key 0 of its slot)
        mask = (self._positions[:N] <= positions.unsqueeze(1))[:, None, None, :]  # [R, 1, 1, N]
        plan = AttentionPlan(num_decode=R, decode_mask=mask)  # rows are the slot range [0, R) itself
        hidden = self.model(ids, positions, write, plan, self.cache)  # [R, C]
        self._logits[:R].copy_(self.model.logits(hidden)[:, : self.vocab_size])

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every (rows, keys) bucket as a CUDA graph, largest first so that the smaller ones
        reuse its memory from the shared pool; logs the time and memory it took."""
        device = self._inputs.device
        torch.cuda.synchronize(device)
        start, before = time.perf_counter(), torch.cuda.memory_allocated(device)
        pool = torch.cuda.graph_pool_handle()
        self._inputs.zero_()
        self._inputs[2] = self.spare  # capture runs write only into the spare slot
        for R in reversed(self.rows):
            for N in reversed(self.keys):
                self._forward(R, N)  # allocations, kernel choices and cuBLAS handles, before capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._forward(R, N)
                self.graphs[(R, N)] = graph
        torch.cuda.synchronize(device)
        log.info("captured %d CUDA graphs of the decode step (batch sizes %s, key lengths %s) in %.1f s, %.0f MB",
                 len(self.graphs), self.rows, self.keys, time.perf_counter() - start,
                 (torch.cuda.memory_allocated(device) - before) / 2**20)
