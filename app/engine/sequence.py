"""What the engine knows about a request while it runs: `Sequence`, the engine's own bookkeeping,
which never leaves the engine process (what crosses it is in protocol.py)."""

import enum
import time
from dataclasses import dataclass, field

from app.engine.protocol import FinishReason, PromptScores, Readout, RequestStats, SamplingParams


class Status(enum.Enum):
    WAITING = enum.auto()
    PREFILL = enum.auto()  # holds a slot; its prompt is being computed, chunk by chunk
    DECODE = enum.auto()  # holds a slot; generates a token per step
    FINISHED = enum.auto()


@dataclass(eq=False)
class Sequence:
    """One prompt being continued. Tokens 0..num_computed-1 have their keys in the cache."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int = 0  # of its random stream (the request's seed, or one drawn by the engine)
    arrival_time: float = field(default_factory=time.monotonic)  # set by the API: its queueing counts too
    output_token_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    slot: int | None = None
    num_computed: int = 0
    finish_reason: FinishReason | None = None
    prompt_scores: PromptScores | None = None  # filled chunk by chunk during prefill
    readout: Readout | None = None  # likewise, with explain or embed (engine/readout.py)
    stop_ids: frozenset[int] = frozenset()  # params.stop_ids(eos), once
    # prefix reuse (prefix_cache.py)
    block_hashes: list[int] | None = None  # chained hashes of the prompt's full blocks, once looked up
    num_cached_tokens: int = 0  # leading prompt tokens whose keys and values (and scores) were reused
    overtaken: int = 0  # times a later sequence was admitted first while this one could have gone
    # timings (time.monotonic) for stats
    scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    stats: RequestStats | None = None  # once finished
    tenant: str = ""  # who it is for: the fair queue shares the engine between tenants (fair_queue.py)
    weight: float = 1.0  # the tenant's weight

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < self.num_prompt_tokens

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]
