"""The synchronous engine: requests in, one step at a time, outputs out.

step() = schedule -> execute -> update. Requests and aborts may arrive from other threads;
a lock guards the bookkeeping, never the forward pass.
"""

import logging
import threading
import time
from collections.abc import Callable

import torch

from app.engine.scheduler import Scheduler, SchedulerOutput
from app.engine.sequence import FinishReason, PromptScores, RequestOutput, SamplingParams, Sequence
from app.engine.stats import RequestStats, StepStats
from app.model.runner import ModelRunner, SequenceResult

log = logging.getLogger(__name__)


class InvalidRequestError(ValueError):
    """A request the engine can never serve; the message says why and names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class Engine:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, max_model_len: int, vocab_size: int,
                 eos_token_id: int | None):
        self.runner = runner
        self.scheduler = scheduler
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        # called on the thread that did the work: the loop thread, or an aborting caller's
        self.step_listeners: list[Callable[[StepStats], None]] = []
        self.request_listeners: list[Callable[[RequestStats], None]] = []
        self._lock = threading.Lock()

    # --- requests ----------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> Sequence:
        """Queue a request. Raises InvalidRequestError if it can never run, QueueFullError if
        the queue is full."""
        self.validate(prompt_token_ids, params)
        seq = Sequence(request_id, list(prompt_token_ids), params)
        if params.seed is not None:  # any integer: taken modulo 2**64, as torch's seeds are
            seq.generator = torch.Generator().manual_seed(params.seed % 2**64)
        with self._lock:
            self.scheduler.add(seq)
        return seq

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        n = len(prompt_token_ids)
        if n == 0:
            raise InvalidRequestError("the prompt is empty", "prompt")
        bad = next((t for t in prompt_token_ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(f"prompt token id {bad} is outside the vocabulary [0, {self.vocab_size})",
                                      "prompt")
        if n + params.max_tokens > self.max_model_len:
            raise InvalidRequestError(
                f"the prompt has {n} tokens and max_tokens is {params.max_tokens}: together {n + params.max_tokens}, "
                f"more than this model's maximum context length of {self.max_model_len} tokens", "max_tokens")
        if params.prompt_logprobs is not None and not 1 <= params.prompt_logprobs_from <= max(n - 1, 1):
            raise InvalidRequestError(f"prompt_logprobs_from must lie in [1, {max(n - 1, 1)}]", "prompt")
        bad = [t for t in (*params.logit_bias, *params.stop_token_ids) if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})",
                                      "logit_bias" if bad[0] in params.logit_bias else "stop_token_ids")

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now; its slot is free for the next step. Returns its last output, or
        None if it had finished already."""
        with self._lock:
            seq = self.scheduler.find(request_id)
            if seq is None:
                return None
            self._finish(seq, FinishReason.ABORT, time.perf_counter())
        return self._output(seq)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0

    # --- the step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one iteration and return what it produced (at most one output per request)."""
        with self._lock:
            batch = self.scheduler.schedule()
        if batch.is_empty:
            return []
        start = time.perf_counter()
        for seq, _ in batch.prefills:
            seq.scheduled_time = seq.scheduled_time or start
        try:
            results = self.runner.execute(batch)
        except Exception as exc:  # one bad step fails its own sequences, not the engine
            log.exception("engine step failed; failing its %d sequences", len(batch.decodes) + len(batch.prefills))
            return self._fail(batch, exc)
        with self._lock:
            outputs, stats = self._update(batch, results)
        stats.duration = time.perf_counter() - start
        for listener in self.step_listeners:
            listener(stats)
        return outputs

    def _update(self, batch: SchedulerOutput, results: list[SequenceResult]) -> tuple[list[RequestOutput], StepStats]:
        now = time.perf_counter()
        chunks = [(seq, 1) for seq in batch.decodes] + batch.prefills
        stats = StepStats(batch.phase, 0.0, len(chunks), batch.num_tokens - len(batch.decodes), len(batch.decodes))
        outputs = []
        for (seq, n), result in zip(chunks, results, strict=True):
            if seq.finish_reason is not None:  # aborted while the step ran
                continue
            seq.num_computed += n
            if result.prompt_scores is not None:
                if seq.prompt_scores is None:
                    seq.prompt_scores = result.prompt_scores
                else:
                    seq.prompt_scores.extend(result.prompt_scores)
            if seq.in_prefill:
                continue
            if seq.prompt_scores is None and seq.params.prompt_logprobs is not None:
                seq.prompt_scores = PromptScores()  # a one-token prompt has nothing to score
            if result.token_id is None:  # a prompt-only request: scored, nothing to generate
                self._finish(seq, FinishReason.LENGTH, now)
                outputs.append(self._output(seq, prompt_scores=seq.prompt_scores))
                continue
            if seq.last_token_time is None:
                seq.first_token_time = now
            else:
                stats.inter_token_latencies.append(now - seq.last_token_time)
            seq.last_token_time = now
            seq.output_token_ids.append(result.token_id)
            reason = self._stop_reason(seq, result.token_id)
            if reason is not None:
                self._finish(seq, reason, now)
            first = len(seq.output_token_ids) == 1
            outputs.append(self._output(seq, [result.token_id], [result.logprob] if result.logprob else [],
                                        seq.prompt_scores if first else None))
        return outputs, stats

    def _stop_reason(self, seq: Sequence, token_id: int) -> FinishReason | None:
        p = seq.params
        if (token_id == self.eos_token_id and not p.ignore_eos) or token_id in p.stop_token_ids:
            return FinishReason.STOP
        if len(seq.output_token_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: FinishReason, now: float) -> None:
        self.scheduler.finish(seq, reason)
        scored = len(seq.prompt_scores.token_logprobs) if seq.prompt_scores else 0
        ttft = seq.first_token_time - seq.arrival_time if seq.first_token_time else None
        seq.stats = RequestStats(seq.request_id, seq.num_prompt_tokens, len(seq.output_token_ids),
                                 (seq.scheduled_time or now) - seq.arrival_time, ttft, now - seq.arrival_time,
                                 reason.value, scored)
        for listener in self.request_listeners:
            listener(seq.stats)

    def _fail(self, batch: SchedulerOutput, exc: Exception) -> list[RequestOutput]:
        outputs = []
        with self._lock:
            for seq in [*batch.decodes, *(s for s, _ in batch.prefills)]:
                if seq.finish_reason is None:
                    self._finish(seq, FinishReason.ERROR, time.perf_counter())
                    outputs.append(self._output(seq, error=f"{type(exc).__name__}: {exc}"))
        return outputs

    @staticmethod
    def _output(seq: Sequence, token_ids=(), logprobs=(), prompt_scores=None, error=None) -> RequestOutput:
        return RequestOutput(seq.request_id, list(token_ids), list(logprobs), prompt_scores, seq.finish_reason,
                             error, len(seq.output_token_ids), seq.stats)
