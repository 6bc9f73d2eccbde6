"""Choosing the next token for a whole batch at once.

Rows are sequences; every row carries its own parameters. The order follows vLLM and the
OpenAI API: logit_bias and min_tokens, then the penalties, then greedy argmax, or temperature,
top-k, top-p and min-p followed by a draw. Each draw uses one uniform number per row, taken
from the request's own generator when it has a seed, so a seeded request gets the same tokens
alone or in any batch. Reported logprobs are the model's own (before any of this processing).
"""

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch
from torch import Tensor

from app.engine.sequence import SamplingParams, Sequence, TokenLogprob

# top-p first looks among this many best tokens and sorts the whole row only when they do
# not reach the requested mass (a full sort of 50k logits costs milliseconds per row)
TOP_P_CANDIDATES = 256


class Sampler:
    """Vectorised sampling. Holds the engine's generator and one generator per seeded request."""

    def __init__(self, eos_token_id: int | None, seed: int = 0):
        self.eos_token_id = eos_token_id
        self.generator = torch.Generator(device="cpu").manual_seed(seed)  # for unseeded requests

    def sample(self, logits: Tensor, seqs: Seq[Sequence]) -> tuple[list[int], list[TokenLogprob | None]]:
        """logits: [B, V] float32, one row per sequence. Returns the chosen token ids and, for
        the rows that asked (params.logprobs is not None), their logprobs."""
        raw = logits
        params = [s.params for s in seqs]
        logits = self._process(logits, seqs)
        greedy = [i for i, p in enumerate(params) if p.greedy]
        if len(greedy) == len(params):
            tokens = logits.argmax(-1)
        else:
            tokens = torch.empty(len(params), dtype=torch.long, device=logits.device)
            if greedy:
                rows = torch.tensor(greedy, device=logits.device)
                tokens[rows] = logits[rows].argmax(-1)
            drawn = [i for i, p in enumerate(params) if not p.greedy]
            rows = torch.tensor(drawn, device=logits.device)
            tokens[rows] = self._draw(logits[rows], [seqs[i] for i in drawn])
        token_list = tokens.tolist()
        return token_list, self._logprobs(raw, tokens, params)

    def _process(self, logits: Tensor, seqs: Seq[Sequence]) -> Tensor:
        """logit_bias, min_tokens and penalties; returns `logits` untouched when none apply."""
        params = [s.params for s in seqs]
        biased = [i for i, p in enumerate(params) if p.logit_bias]
        held = [i for i, s in enumerate(seqs) if len(s.output_token_ids) < s.params.min_tokens]
        penalised = [i for i, p in enumerate(params) if p.uses_penalties]
        if not (biased or held or penalised):
            return logits
        logits = logits.clone()
        for i in biased:
            ids, values = zip(*params[i].logit_bias.items(), strict=True)
            logits[i, list(ids)] += torch.tensor(values, dtype=logits.dtype, device=logits.device)
        for i in held:  # no way to stop yet
            banned = list(params[i].stop_token_ids)
            if self.eos_token_id is not None and not params[i].ignore_eos:
                banned.append(self.eos_token_id)
            logits[i, banned] = float("-inf")
        if penalised:
            rows = torch.tensor(penalised, device=logits.device)
            logits[rows] = apply_penalties(logits[rows], [seqs[i] for i in penalised])
        return logits

    def _draw(self, logits: Tensor, seqs: list[Sequence]) -> Tensor:
        """Sample one token per row. logits: [B, V] -> [B]."""
        dev, V = logits.device, logits.shape[-1]
        params = [s.params for s in seqs]
        temperature = torch.tensor([p.temperature for p in params], device=dev).unsqueeze(1)
        logits = logits / temperature
        # each filter touches only the rows that use it, so a row's draw never depends on its batch
        rows = [i for i, p in enumerate(params) if 0 < p.top_k < V]
        if rows:
            index = torch.tensor(rows, device=dev)
            logits[index] = keep_top_k(logits[index], [params[i].top_k for i in rows])
        rows = [i for i, p in enumerate(params) if p.top_p < 1.0]
        if rows:
            index = torch.tensor(rows, device=dev)
            logits[index] = keep_top_p(logits[index], [params[i].top_p for i in rows])
        probs = logits.softmax(-1)
        if any(p.min_p for p in params):
            min_p = torch.tensor([p.min_p for p in params], device=dev).unsqueeze(1)
            probs = probs.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), 0.0)
        cdf = probs.cumsum(-1)  # [B, V]
        u = torch.tensor([torch.rand(1, generator=s.generator or self.generator).item() for s in seqs],
                         device=dev, dtype=cdf.dtype).unsqueeze(1)
        # the first token whose cumulative probability passes u * total; it has probability > 0
        return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1).clamp_(max=V - 1)

    @staticmethod
    def _logprobs(raw: Tensor, tokens: Tensor, params: Seq[SamplingParams]) -> list[TokenLogprob | None]:
        wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
        result: list[TokenLogprob | None] = [None] * len(params)
        if not wanted:
            return result
        rows = torch.tensor(wanted, device=raw.device)
        logprobs = raw[rows].log_softmax(-1)
        chosen = tokens[rows]
        scores = score_tokens(logprobs, chosen, max(params[i].logprobs for i in wanted))
        for j, i in enumerate(wanted):
            k = params[i].logprobs
            result[i] = TokenLogprob(scores.token_ids[j], scores.logprobs[j], scores.ranks[j], scores.top[j][:k])
        return result


@dataclass
class TokenScores:
    """Logprob, 1-based rank and top alternatives of N given tokens, as Python lists."""

    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]
    top: list[list[tuple[int, float]]]


def score_tokens(logprobs: Tensor, token_ids: Tensor, k: int) -> TokenScores:
    """logprobs: [N, V] log-softmax rows; token_ids: [N]; k: how many alternatives to list.
    A token's rank counts the tokens strictly more likely, so ties share the better rank."""
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))  # [N, 1]
    ranks = ((logprobs > chosen).sum(-1, dtype=torch.int32) + 1).tolist()  # int32: 2x faster than int64
    if k:
        values, ids = logprobs.topk(k, dim=-1)
        top = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    else:
        top = [[] for _ in ranks]
    return TokenScores(token_ids.tolist(), chosen.squeeze(1).tolist(), ranks, top)


def apply_penalties(logits: Tensor, seqs: list[Sequence]) -> Tensor:
    """Repetition penalty (CTRL/HF style, over prompt and output tokens) and OpenAI's presence
    and frequency penalties (over output tokens). logits: [B, V]."""
    B, V = logits.shape
    dev = logits.device
    counts = torch.zeros(B, V, device=dev)
    seen = torch.zeros(B, V, dtype=torch.bool, device=dev)
    for i, seq in enumerate(seqs):
        if seq.output_token_ids:
            out = torch.tensor(seq.output_token_ids, device=dev)
            counts[i].index_add_(0, out, torch.ones(len(out), device=dev))
        seen[i, seq.prompt_token_ids] = True
    seen |= counts > 0
    params = [s.params for s in seqs]
    rep = torch.tensor([p.repetition_penalty for p in params], device=dev).unsqueeze(1)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    freq = torch.tensor([p.frequency_penalty for p in params], device=dev).unsqueeze(1)
    pres = torch.tensor([p.presence_penalty for p in params], device=dev).unsqueeze(1)
    return logits - freq * counts - pres * (counts > 0)


def keep_top_k(logits: Tensor, top_k: list[int]) -> Tensor:
    """Mask all but each row's k best logits (0 < k). Ties with the k-th stay."""
    ks = torch.tensor(top_k, device=logits.device).clamp(max=logits.shape[-1])
    values = logits.topk(int(ks.max()), dim=-1).values  # [B, kmax], descending
    kth = values.gather(1, (ks - 1).unsqueeze(1))
    return logits.masked_fill(logits < kth, float("-inf"))


def keep_top_p(logits: Tensor, top_p: list[float]) -> Tensor:
    """Keep the smallest set of best tokens whose probability reaches p (nucleus sampling)."""
    B, V = logits.shape
    p = torch.tensor(top_p, device=logits.device).unsqueeze(1)
    probs = logits.softmax(-1)
    k = min(V, TOP_P_CANDIDATES)
    best = probs.topk(k, dim=-1).values  # [B, k] descending
    thresholds = nucleus_threshold(best, p, complete=k == V)
    for i in thresholds.isnan().nonzero()[:, 0].tolist():  # the candidates fall short of p
        row = probs[i : i + 1].sort(descending=True).values
        thresholds[i] = nucleus_threshold(row, p[i : i + 1], complete=True)[0]
    return logits.masked_fill(probs < thresholds, float("-inf"))


def nucleus_threshold(sorted_probs: Tensor, p: Tensor, complete: bool) -> Tensor:
    """sorted_probs: [B, k] descending, the whole row when `complete`. Returns [B, 1]: the
    probability of the last token kept, or NaN where these k tokens do not reach p."""
    k = sorted_probs.shape[1]
    last = ((sorted_probs.cumsum(-1) < p).sum(-1, keepdim=True)).clamp(max=k)  # the one crossing p
    threshold = sorted_probs.gather(1, last.clamp(max=k - 1))
    if complete:  # rounding can leave the total a hair under p: then keep everything
        return threshold
    return threshold.masked_fill(last == k, float("nan"))
