"""Choosing the next token of many sequences at once, each by its own parameters.

Per-slot state lives across steps: each sequence's random stream and draw count, and, once a
sequence uses penalties, [slots, vocab] tables of its output counts and of the tokens it has
seen. `add()` writes a slot when a sequence takes it. A step groups its rows by what they need
(greedy or drawn, top-k, top-p, penalties, ...) into a `RowPlan`, which is kept for as long as
the rows stay the same (and no slot changes hands), so a steady decode step does no
per-sequence Python.

The order follows vLLM and the OpenAI API: logit_bias and min_tokens, then the penalties, then
greedy argmax, or temperature, top-k, top-p and min-p followed by a draw. A draw uses one
uniform number per row from the sequence's own counter-based stream (app/model/sampling.py), so
a seeded request gets the same tokens alone or in any batch. Reported logprobs are the model's
own (before any of this processing).
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from app.engine.protocol import SamplingParams, TokenLogprob
from app.model.sampling import apply_penalties, draw, keep_top_k, keep_top_p, mix64, score_tokens, uniform


@dataclass
class RowPlan:
    """The rows of a step grouped by what they need. Index tensors are row numbers in the step's
    logits; `*_slots` arrays are the rows' cache slots."""

    slots: np.ndarray  # [B]
    all_greedy: bool
    greedy: Tensor | None = None  # rows taking the argmax (when not all do)
    drawn: Tensor | None = None  # rows that draw
    drawn_slots: np.ndarray | None = None
    temperature: Tensor | None = None  # [D, 1] of the drawn rows
    top_k: tuple[Tensor, Tensor] | None = None  # (positions among the drawn rows, k)
    top_p: tuple[Tensor, Tensor] | None = None  # (positions among the drawn rows, p)
    min_p: Tensor | None = None  # [D, 1]
    penalised: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None = None  # rows, slots, rep, freq, pres
    bias: tuple[Tensor, Tensor, Tensor] | None = None  # (rows, token ids, values) of every logit_bias entry
    held: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # min_tokens: rows, ids, slots, min
    logprobs: tuple[list[int], list[int]] | None = None  # rows wanting logprobs, and their k


class Sampler:
    def __init__(self, num_slots: int, vocab_size: int, eos_token_id: int | None, device: torch.device | str = "cpu"):
        self.vocab_size, self.eos_token_id = vocab_size, eos_token_id
        self.device = torch.device(device)
        self.params: list[SamplingParams | None] = [None] * num_slots
        self.streams = np.zeros(num_slots, np.uint64)  # each slot's mixed seed
        self.num_sampled = np.zeros(num_slots, np.int64)  # draws so far: the counter of its stream
        self.counts: Tensor | None = None  # [S, V] float32 output-token counts, made with the first penalty
        self.seen: Tensor | None = None  # [S, V] bool: in the prompt or the output
        self._plans: dict[bytes, RowPlan] = {}  # by the rows' slots (a step samples a few blocks of rows)

    def add(self, slot: int, params: SamplingParams, seed: int, prompt_token_ids: list[int],
            output_token_ids: list[int] = ()) -> None:
        """A sequence takes `slot` (with the tokens it has generated already, if any)."""
        self.params[slot] = params
        self.streams[slot] = mix64(np.array([seed % 2**64], np.uint64))[0]
        self.num_sampled[slot] = len(output_token_ids)
        if params.uses_penalties:
            if self.counts is None:
                shape = (len(self.params), self.vocab_size)
                self.counts = torch.zeros(shape, device=self.device)
                self.seen = torch.zeros(shape, dtype=torch.bool, device=self.device)
            self.counts[slot].zero_()
            self.seen[slot].zero_()
            self.seen[slot, torch.tensor(prompt_token_ids, device=self.device)] = True
            if output_token_ids:
                outputs = torch.tensor(output_token_ids, device=self.device)
                self.counts[slot].index_add_(0, outputs, torch.ones(len(outputs), device=self.device))
                self.seen[slot, outputs] = True
        self._plans.clear()  # the same slots may now hold other parameters

    def sample(self, logits: Tensor, slots: np.ndarray) -> tuple[np.ndarray, list[TokenLogprob | None] | None]:
        """logits: [B, V] float32, row i for the sequence in cache slot slots[i]. Returns the chosen
        token ids [B], and, when a row asked for them, their logprobs (None if no row did)."""
        plan = self._row_plan(slots)
        raw = logits
        logits = self._process(logits, plan)
        if plan.all_greedy:
            tokens = logits.argmax(-1)
        else:
            tokens = torch.empty(len(slots), dtype=torch.long, device=logits.device)
            if plan.greedy is not None:
                tokens[plan.greedy] = logits[plan.greedy].argmax(-1)
            tokens[plan.drawn] = self._draw(logits[plan.drawn], plan)
        if plan.penalised is not None:
            rows, pslots = plan.penalised[:2]
            chosen = tokens[rows]
            self.counts.index_put_((pslots, chosen), torch.ones_like(chosen, dtype=self.counts.dtype),
                                   accumulate=True)
            self.seen[pslots, chosen] = True
        self.num_sampled[slots] += 1
        logprobs = self._logprobs(raw, tokens, plan) if plan.logprobs is not None else None
        return tokens.cpu().numpy(), logprobs

    def _row_plan(self, slots: np.ndarray) -> RowPlan:
        key = slots.tobytes()
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 64:  # rows that change every step (prefills) must not pile up
                self._plans.clear()
            plan = self._plans[key] = self._make_plan(slots)
        return plan

    def _make_plan(self, slots: np.ndarray) -> RowPlan:
        """Group the rows by what they need: runs when the rows change, not every step."""
        params = [self.params[s] for s in slots]
        dev = self.device

        def rows_where(test) -> list[int]:
            return [i for i, p in enumerate(params) if test(p)]

        def tensor(values, dtype=None) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=dev)

        greedy = rows_where(lambda p: p.greedy)
        plan = RowPlan(slots.copy(), all_greedy=len(greedy) == len(params))
        if not plan.all_greedy:
            drawn = rows_where(lambda p: not p.greedy)
            drawn_params = [params[i] for i in drawn]
            plan.greedy = tensor(greedy, torch.long) if greedy else None
            plan.drawn, plan.drawn_slots = tensor(drawn, torch.long), slots[drawn]
            plan.temperature = tensor([p.temperature for p in drawn_params]).unsqueeze(1)
            rows = [j for j, p in enumerate(drawn_params) if 0 < p.top_k < self.vocab_size]
            if rows:
                plan.top_k = tensor(rows, torch.long), tensor([drawn_params[j].top_k for j in rows], torch.long)
            rows = [j for j, p in enumerate(drawn_params) if p.top_p < 1.0]
            if rows:
                plan.top_p = tensor(rows, torch.long), tensor([drawn_params[j].top_p for j in rows])
            if any(p.min_p for p in drawn_params):
                plan.min_p = tensor([p.min_p for p in drawn_params]).unsqueeze(1)
        rows = rows_where(lambda p: p.uses_penalties)
        if rows:
            plan.penalised = (tensor(rows, torch.long), tensor(slots[rows], torch.long),
                              *(tensor([getattr(params[i], name) for i in rows]) for name in
                                ("repetition_penalty", "frequency_penalty", "presence_penalty")))
        entries = [(i, t, v) for i, p in enumerate(params) for t, v in p.logit_bias.items()]
        if entries:
            i, t, v = zip(*entries, strict=True)
            plan.bias = tensor(i, torch.long), tensor(t, torch.long), tensor(v)
        pairs = [(i, t, p.min_tokens) for i, p in enumerate(params) if p.min_tokens
                 for t in sorted(p.stop_ids(self.eos_token_id))]
        if pairs:
            i, t, m = (np.array(column) for column in zip(*pairs, strict=True))
            plan.held = i, t, slots[i], m
        rows = rows_where(lambda p: p.logprobs is not None)
        if rows:
            plan.logprobs = rows, [params[i].logprobs for i in rows]
        return plan

    def _process(self, logits: Tensor, plan: RowPlan) -> Tensor:
        """logit_bias, min_tokens and penalties; returns `logits` untouched when none apply."""
        if plan.bias is None and plan.held is None and plan.penalised is None:
            return logits
        logits = logits.clone()
        if plan.bias is not None:
            rows, ids, values = plan.bias
            logits.index_put_((rows, ids), values, accumulate=True)
        if plan.held is not None:  # no way to stop yet
            rows, ids, slots, minimum = plan.held
            active = self.num_sampled[slots] < minimum
            if active.any():
                logits[torch.from_numpy(rows[active]).to(logits.device),
                       torch.from_numpy(ids[active]).to(logits.device)] = float("-inf")
        if plan.penalised is not None:
            rows, slots, rep, freq, pres = plan.penalised
            logits[rows] = apply_penalties(logits[rows], self.counts[slots], self.seen[slots], rep, freq, pres)
        return logits

    def _draw(self, logits: Tensor, plan: RowPlan) -> Tensor:
        """Sample one token per drawn row. logits: [D, V] -> [D]."""
        logits = logits / plan.temperature
        # each filter touches only the rows that use it, so a row's draw never depends on its batch
        if plan.top_k is not None:
            rows, k = plan.top_k
            logits[rows] = keep_top_k(logits[rows], k)
        if plan.top_p is not None:
            rows, p = plan.top_p
            logits[rows] = keep_top_p(logits[rows], p)
        probs = logits.softmax(-1)
        if plan.min_p is not None:
            probs = probs.masked_fill(probs < plan.min_p * probs.amax(-1, keepdim=True), 0.0)
        u = uniform(self.streams[plan.drawn_slots], self.num_sampled[plan.drawn_slots])
        return draw(probs, torch.from_numpy(u).to(probs.device))

    @staticmethod
    def _logprobs(raw: Tensor, tokens: Tensor, plan: RowPlan) -> list[TokenLogprob | None]:
        rows, ks = plan.logprobs
        result: list[TokenLogprob | None] = [None] * len(tokens)
        index = torch.tensor(rows, device=raw.device)
        scores = score_tokens(raw[index].log_softmax(-1), tokens[index], max(ks))
        for j, (i, k) in enumerate(zip(rows, ks, strict=True)):
            result[i] = TokenLogprob(scores.token_ids[j], scores.logprobs[j], scores.ranks[j], scores.top[j][:k])
        return result
