"""What the engine reports: per finished sequence and per step. The stats travel with the outputs
to the API process, where app/metrics.py turns them into Prometheus series."""

import msgspec


class RequestStats(msgspec.Struct, array_like=True, gc=False):
    """One finished sequence, as the engine saw it (times in seconds)."""

    request_id: str
    prompt_tokens: int
    generation_tokens: int
    queue_time: float  # arrival -> first scheduled
    time_to_first_token: float | None  # arrival -> first generated token; None if none was
    e2e_time: float  # arrival -> finished
    finish_reason: str
    scored_tokens: int  # prompt tokens given a logprob
    cached_tokens: int = 0  # prompt tokens whose keys and values were reused, not computed


class StepStats(msgspec.Struct, array_like=True, gc=False):
    """One engine step, and the engine's state right after it."""

    phase: str  # prefill, decode or mixed; "idle" for a state report without a step
    duration: float
    batch_size: int  # sequences in the step
    num_prefill_tokens: int
    num_decode_tokens: int
    inter_token_latencies: list[float] = []
    num_running: int = 0  # sequences holding a cache slot, after the step
    num_waiting: int = 0  # sequences queued for a slot
    kv_cache_usage: float = 0.0  # fraction of slots held
    memory_used: float | None = None  # bytes on the model's device (refreshed about once a second)
    # prefix reuse in this step: prompt tokens of the sequences admitted, of those the tokens reused,
    # and slots whose kept keys and values were dropped to make room
    prefix_queried_tokens: int = 0
    prefix_hit_tokens: int = 0
    prefix_evictions: int = 0
