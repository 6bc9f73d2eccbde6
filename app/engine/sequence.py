"""What the engine knows about a request: its parameters, its state, and what it emits.

The types that cross the process boundary (parameters in, outputs and stats out) are msgspec
Structs: they encode to msgpack in microseconds; those made per token are not tracked by the
garbage collector (gc=False: they never form reference cycles). `Sequence` is the engine's own bookkeeping and
never leaves the engine process.
"""

import enum
import time
from dataclasses import dataclass, field

import msgspec

from app.engine.inspection import EmbedParams, ExplainParams, Readout
from app.engine.stats import RequestStats


class SamplingParams(msgspec.Struct, omit_defaults=True):
    """How to continue one prompt. The HTTP layer converts its schemas into this, once."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = {}
    min_tokens: int = 0
    seed: int | None = None
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k: the sampled token's logprob and the top k
    prompt_logprobs: int | None = None  # None: none; k: score prompt tokens, with the top k alternatives
    prompt_logprobs_from: int = 1  # the first prompt token to score (>= 1: token 0 has no context)
    prompt_stats: bool = False  # with prompt_logprobs: entropy and variance of log p per position
    explain: ExplainParams | None = None  # attention and logit lens at prompt positions (inspection.py)
    embed: EmbedParams | None = None  # pooled hidden states of the prompt (inspection.py)

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5  # below that, dividing by it overflows: argmax is the answer

    @property
    def uses_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @property
    def reads_hidden_states_from(self) -> int | None:
        """The first prompt position whose hidden states this request reads (explain, mean-pooled
        embeddings): from there on its prompt goes through the model even where another request's
        cached keys and values could stand in. None: it reads none (or only the last position's)."""
        starts = [*(self.explain.positions[:1] if self.explain else ()),
                  *((0,) if self.embed is not None and "mean" in self.embed.pooling else ())]
        return min(starts, default=None)

    def stop_ids(self, eos_token_id: int | None) -> frozenset[int]:
        """The tokens that end a sequence: EOS (unless ignore_eos) and stop_token_ids. The sampler
        holds them back until min_tokens are out; the scheduler ends a sequence that draws one."""
        eos = () if eos_token_id is None or self.ignore_eos else (eos_token_id,)
        return frozenset((*self.stop_token_ids, *eos))


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS or a stop token (the API also uses it for stop strings)
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # the client went away or asked
    ERROR = "error"  # the step that ran it failed, or the engine died


class TokenLogprob(msgspec.Struct, array_like=True, gc=False):
    """The logprob of one chosen token and, when asked, the top alternatives at its position."""

    token_id: int
    logprob: float
    rank: int  # 1-based; ties count in the token's favour
    top: list[tuple[int, float]] = []


class PromptScores(msgspec.Struct, array_like=True, gc=False):
    """Scores of prompt tokens f..n-1 (f = SamplingParams.prompt_logprobs_from, 1 by default: token
    0 has nothing before it), each given the tokens before it. Lists are aligned: entry i is
    about prompt token f + i."""

    token_logprobs: list[float] = []
    ranks: list[int] = []
    top: list[list[tuple[int, float]]] = []
    entropy: list[float] = []  # H(p) of the model's distribution
    logprob_variance: list[float] = []  # Var_{x~p}[log p(x)]

    def extend(self, other: "PromptScores") -> None:
        self.token_logprobs += other.token_logprobs
        self.ranks += other.ranks
        self.top += other.top
        self.entropy += other.entropy
        self.logprob_variance += other.logprob_variance


class RequestOutput(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """What one engine step produced for one request: zero or one new token, plus, when the
    prompt has just been scored, its scores; `finish_reason` is set on the last output."""

    request_id: str
    token_ids: list[int] = []
    logprobs: list[TokenLogprob] = []
    prompt_scores: PromptScores | None = None
    finish_reason: FinishReason | None = None
    error: str | None = None  # why it ended with FinishReason.ERROR
    num_output_tokens: int = 0  # total so far
    stats: RequestStats | None = None  # on the last output
    readout: Readout | None = None  # with explain or embed: on the output that ends the prompt

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


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
