"""What the engine reports after each step; metrics.py turns it into Prometheus series."""

from dataclasses import dataclass, field


@dataclass
class RequestStats:
    """One finished request, as the engine saw it (times in seconds)."""

    request_id: str
    prompt_tokens: int
    generation_tokens: int
    queue_time: float  # arrival -> first scheduled
    time_to_first_token: float | None  # arrival -> first generated token; None if none was
    e2e_time: float  # arrival -> finished
    finish_reason: str
    scored_tokens: int  # prompt tokens given a logprob


@dataclass
class StepStats:
    phase: str  # prefill, decode or mixed
    duration: float
    batch_size: int  # sequences in the step
    num_prefill_tokens: int
    num_decode_tokens: int
    inter_token_latencies: list[float] = field(default_factory=list)
