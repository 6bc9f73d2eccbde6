"""Reads what requests ask of the model's hidden states (explain, embed: protocol.py) beside the
forward pass that computes their prompts, chunk by chunk.

Before the forward, `Reader.plan` names the packed rows whose residual stream the model keeps,
per layer (a Capture), and the rows whose final hidden state it returns (added to the rows the
runner asks for). After it, `Reader.collect` turns them into each sequence's Readout: for an
explained position, its attention weights recomputed from the keys in the KV cache and its logit
lens (app/model/lens.py); for an embedding, the pooled hidden states, finished (averaged,
standardised, normalised) with the prompt's last chunk. No second forward, no Python per token:
per chunk, a few tensor operations per layer.
"""

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from app.engine.protocol import POOLINGS, EmbedParams, EngineRequest, PositionExplanation, Readout, SamplingParams
from app.engine.sequence import Sequence
from app.model.gpt2 import GPT2, Capture, KVCache
from app.model.lens import attention_weights, future, logit_lens, top_attention

if TYPE_CHECKING:
    from app.engine.core import EngineCore

# (pooling, layer) -> (mean [C], std [C]) float64 on the CPU over a reference corpus: see reference_statistics
Statistics = dict[tuple[str, int], tuple[Tensor, Tensor]]
MIN_STD = 1e-6  # a dimension that never varies in the reference corpus is divided by this, not by 0


@dataclass
class Read:
    """What one prefill chunk's sequence reads in this step. Slices index each layer's kept rows
    (layer L: the final hidden states the forward returns after the runner's own rows)."""

    chunk: int  # index in SchedulerOutput.prefills
    seq: Sequence
    start: int  # the chunk's first prompt position
    length: int
    explained: list[int] = field(default_factory=list)  # prompt positions explained in this chunk
    explain_rows: dict[int, slice] = field(default_factory=dict)
    embed_rows: dict[int, slice] = field(default_factory=dict)

    @property
    def ends_prompt(self) -> bool:
        return self.start + self.length == self.seq.num_prompt_tokens


@dataclass
class ReadPlan:
    capture: Capture | None = None
    final_rows: list[int] = field(default_factory=list)  # packed rows whose final hidden state is read
    reads: list[Read] = field(default_factory=list)


class Reader:
    """Owned by the runner: plans and collects the readouts of each step."""

    def __init__(self, model: GPT2, logits: Callable[[Tensor], Tensor], device: torch.device):
        self.model, self.logits, self.device = model, logits, device
        self.num_layers = model.config.n_layer
        self.stats: Statistics | None = None  # for EmbedParams.standardize (GPT2_EMBEDDING_REFERENCE)

    def plan(self, prefills: list[tuple[Sequence, int]], first_row: int) -> ReadPlan:
        """The rows to keep for the prefill chunks that read hidden states; the chunks' tokens
        are packed from `first_row` on, in order (after the decodes)."""
        L = self.num_layers
        kept: dict[int, list[int]] = {layer: [] for layer in range(L + 1)}

        def keep(layer: int, rows: list[int] | range) -> slice:
            taken = kept[layer]
            taken.extend(rows)
            return slice(len(taken) - len(rows), len(taken))

        plan, row = ReadPlan(), first_row
        for i, (seq, n) in enumerate(prefills):
            explain, embed, start = seq.params.explain, seq.params.embed, seq.num_computed
            if explain is not None or embed is not None:
                read = Read(i, seq, start, n)
                if explain is not None:
                    lo = bisect.bisect_left(explain.positions, start)
                    read.explained = explain.positions[lo : bisect.bisect_left(explain.positions, start + n)]
                    rows = [row + p - start for p in read.explained]
                    read.explain_rows = {layer: keep(layer, rows) for layer in range(L + 1)}
                if embed is not None:
                    # mean pooling reads every position, "last" alone only the prompt's last one
                    rows = range(row, row + n) if "mean" in embed.pooling else (
                        [row + n - 1] if read.ends_prompt else [])
                    read.embed_rows = {layer: keep(layer, rows) for layer in embed.layers}
                plan.reads.append(read)
            row += n
        captured = {layer: torch.tensor(rows, device=self.device) for layer, rows in kept.items() if layer < L and rows}
        plan.capture = Capture(captured) if captured else None
        plan.final_rows = kept[L]
        return plan

    def collect(self, plan: ReadPlan, final: Tensor, cache: KVCache) -> dict[int, Readout]:
        """Each reading chunk's Readout so far (by chunk index), given the final hidden states
        [len(plan.final_rows), C] of the rows the plan asked for."""

        def rows(layer: int, taken: slice) -> Tensor:  # [n, C]
            return final[taken] if layer == self.num_layers else plan.capture.residuals[layer][taken]

        out = {}
        for read in plan.reads:
            readout = read.seq.readout or Readout()
            if read.explained:
                readout.explanation += self._explain(read, rows, cache)
            if read.seq.params.embed is not None:
                readout.embeddings = self._pool(read, rows, readout.embeddings)
            out[read.chunk] = readout
        return out

    def _explain(self, read: Read, rows: Callable, cache: KVCache) -> list[PositionExplanation]:
        params, L = read.seq.params.explain, self.num_layers
        positions = torch.tensor(read.explained, device=self.device)
        streams = torch.stack([rows(layer, read.explain_rows[layer]) for layer in range(L)])  # [L, R, C]
        out = [PositionExplanation(p) for p in read.explained]
        if params.attention_top_k:
            num_keys = read.explained[-1] + 1
            unseen = future(positions, num_keys)
            tops = [top_attention(attention_weights(block, streams[layer], cache.k[layer][read.seq.slot, :, :num_keys],
                                                    unseen), unseen, params.attention_top_k)
                    for layer, block in enumerate(self.model.h)]
            keys = torch.stack([t[0] for t in tops], 1).cpu()  # [R, L, H + 1, k']
            weights = torch.stack([t[1] for t in tops], 1).cpu()
            for r, p in enumerate(read.explained):
                k = min(params.attention_top_k, p + 1)
                out[r].attention_keys = keys[r, :, :, :k].flatten().tolist()
                out[r].attention_weights = weights[r, :, :, :k].flatten().tolist()
        if params.lens_top_k:
            prompt = read.seq.prompt_token_ids
            next_ids = torch.tensor([prompt[p + 1] if p + 1 < len(prompt) else 0 for p in read.explained],
                                    device=self.device)
            ids, probs, nexts = logit_lens(self.model.ln_f, self.logits, streams,
                                           rows(L, read.explain_rows[L]), params.lens_top_k, next_ids)
            ids, probs, nexts = ids.cpu(), probs.cpu(), nexts.cpu()
            for r, p in enumerate(read.explained):
                out[r].lens_token_ids = ids[:, r].flatten().tolist()
                out[r].lens_probs = probs[:, r].flatten().tolist()
                out[r].lens_next_probs = nexts[:, r].tolist() if p + 1 < len(prompt) else []
        return out

    def _pool(self, read: Read, rows: Callable, partial: list[list[float]]) -> list[list[float]]:
        """One vector per (pooling, layer): running sums of the mean pooling until the prompt's last
        chunk, then the finished embeddings."""
        embed, n = read.seq.params.embed, read.seq.num_prompt_tokens
        out = []
        for j, (pooling, layer) in enumerate((p, layer) for p in embed.pooling for layer in embed.layers):
            if pooling == "last" and not read.ends_prompt:
                out.append([])  # the last position is in a later chunk
                continue
            hidden = rows(layer, read.embed_rows[layer]).float()  # [rows, C]
            # a vector of C numbers: finished in float64 on the CPU (MPS has no float64)
            vector = (hidden[-1] if pooling == "last" else hidden.sum(0)).cpu().double()
            if pooling == "mean" and partial:
                vector += torch.tensor(partial[j], dtype=torch.float64)
            if read.ends_prompt:
                vector = self._finish(vector / n if pooling == "mean" else vector, pooling, layer, embed)
            out.append(vector.tolist())
        return out

    def _finish(self, vector: Tensor, pooling: str, layer: int, embed: EmbedParams) -> Tensor:
        if embed.standardize:
            if self.stats is None:
                raise ValueError("standardize asked, but no reference statistics are loaded")
            mean, std = self.stats[(pooling, layer)]
            vector = (vector - mean) / std
        return F.normalize(vector, dim=0) if embed.normalize else vector


def reference_params(num_layers: int) -> SamplingParams:
    """Every pooling of every layer, raw: what reference_statistics reads of each text."""
    return SamplingParams(max_tokens=0, temperature=0.0, embed=EmbedParams(
        layers=list(range(num_layers + 1)), pooling=list(POOLINGS), standardize=False, normalize=False))


def reference_statistics(core: "EngineCore", prompts: list[list[int]]) -> Statistics:
    """The mean and standard deviation (per dimension, float64) of every pooling of every layer
    over these prompts, each embedded by the engine itself as a request would be. Standardising
    with them removes the few dimensions that dominate GPT-2's raw hidden states and make
    unrelated texts' cosine similarity near 1 (Timkey & van Schijndel, 2021)."""
    if len(prompts) < 2:
        raise ValueError(f"the reference corpus needs at least 2 texts, got {len(prompts)}")
    L = core.runner.model.config.n_layer
    params = reference_params(L)
    total = total_sq = None
    for i, prompt in enumerate(prompts):
        core.add(EngineRequest(f"reference-{i}", prompt, params, 0.0))
    while core.has_unfinished():
        for output in core.step()[0]:
            if output.readout is None:
                raise RuntimeError(f"embedding the reference text {output.request_id} failed: {output.error}")
            vectors = torch.tensor(output.readout.embeddings, dtype=torch.float64)  # [pooling x layer, C]
            total = vectors if total is None else total + vectors
            total_sq = vectors.square() if total_sq is None else total_sq + vectors.square()
    mean = total / len(prompts)
    std = (total_sq / len(prompts) - mean.square()).clamp_min(0).sqrt().clamp_min(MIN_STD)
    combos = [(p, layer) for p in POOLINGS for layer in range(L + 1)]
    return {combo: (mean[j], std[j]) for j, combo in enumerate(combos)}
