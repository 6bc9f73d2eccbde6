"""Every type that crosses the process boundary between the API processes (client.py) and the
engine core (core.py): what a request asks, what comes back, and the messages that carry them.

Plain msgspec Structs, no torch, msgpack on the wire over a ZeroMQ ROUTER (core) / DEALER (clients)
pair of sockets: requests and aborts go in; each step's outputs, with the step's stats, come out,
one message per client per step. They encode in microseconds; those made per token are not tracked
by the garbage collector (gc=False: they never form reference cycles). The engine's own bookkeeping
(`Sequence`, sequence.py) never leaves the engine process.

Hidden-state reads (explain, embed; computed in readout.py, maths in app/model/lens.py) number
layers as transformers' `output_hidden_states` does: 0 is the embeddings (token + position), l in
1..L-1 the residual stream after block l, and L the final hidden state (after the final layer
norm). Attention layer l (0-based) is block l's.
"""

import enum
import functools
import operator

import msgspec

# --- what a request asks -------------------------------------------------------------------------
POOLINGS = ("mean", "last")  # EmbedParams.pooling's choices


class ExplainParams(msgspec.Struct, array_like=True, omit_defaults=True):
    """Explain these prompt positions (ascending, each in [0, prompt length))."""

    positions: list[int]
    attention_top_k: int = 0  # per layer, head and the heads' mean: the k keys weighted most (0: none)
    lens_top_k: int = 0  # per layer 0..L: the k likeliest next tokens under the logit lens (0: no lens)


class EmbedParams(msgspec.Struct, array_like=True, omit_defaults=True):
    """Pool the prompt's hidden states into one vector per (pooling, layer), in that order."""

    layers: list[int]  # 0..L, see the module's docstring
    # "mean" over every prompt position, "last": the last position
    pooling: list[str] = msgspec.field(default_factory=lambda: ["mean"])
    standardize: bool = False  # subtract the reference corpus's mean and divide by its std, per dimension
    normalize: bool = True  # to unit L2 norm (after standardizing)


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
    explain: ExplainParams | None = None  # attention and logit lens at prompt positions (readout.py)
    embed: EmbedParams | None = None  # pooled hidden states of the prompt (readout.py)

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


class EngineRequest(msgspec.Struct, array_like=True):
    """One sequence to run (a prompt and its parameters): what the routes hand the client, and the
    client the core. The client stamps the last three fields when it submits the sequence."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float = 0.0  # time.monotonic() when the API submitted it
    tenant: str = ""  # who it is for ("key:3", "addr:10.0.0.7"; never a secret): the fair queue's groups
    weight: float = 1.0  # the tenant's weight in the fair queue


# --- what comes back ------------------------------------------------------------------------------
class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS or a stop token (the API also uses it for stop strings)
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # the client went away or asked
    ERROR = "error"  # the step that ran it failed, or the engine died


class PositionExplanation(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """One explained position p. Arrays are flat, row-major:
    attention [L, H + 1, k] with k = min(attention_top_k, p + 1): for each layer, each head and then
    the heads' mean, the positions attended to most, largest weight first, and their weights;
    lens [L + 1, lens_top_k]: the likeliest next tokens read at each layer, most likely first, and
    their probabilities; lens_next_probs [L + 1]: the probability of the prompt's token at p + 1 at
    each layer (empty at the prompt's last position)."""

    position: int
    attention_keys: list[int] = []
    attention_weights: list[float] = []
    lens_token_ids: list[int] = []
    lens_probs: list[float] = []
    lens_next_probs: list[float] = []


class Readout(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """What was read from one sequence's hidden states (on the output that ends its prompt)."""

    explanation: list[PositionExplanation] = []
    embeddings: list[list[float]] = []  # one per (pooling, layer) of EmbedParams; partial sums until then


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


# --- the messages ---------------------------------------------------------------------------------
class AddRequests(msgspec.Struct, tag="add", array_like=True):
    """Sequences queued together (all the choices and inputs of one HTTP request)."""

    requests: list[EngineRequest]


class AbortRequests(msgspec.Struct, tag="abort", array_like=True):
    request_ids: list[str]


class Hello(msgspec.Struct, tag="hello", array_like=True):
    """A client's first message. The one client that records the engine's step stats (the API
    process that serves /metrics for them) says so."""

    records_step_stats: bool = True


ClientMessage = AddRequests | AbortRequests | Hello


class EngineOutputs(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """What one step (or an abort) produced for one client. `stats` goes to the client that
    records them; a message with neither outputs nor stats is a heartbeat."""

    outputs: list[RequestOutput] = []
    stats: StepStats | None = None


class EngineInfo(msgspec.Struct):
    """What the engine core reports once it is ready: the model, and the limits requests must respect."""

    name: str  # as served
    source: str  # GPT2_MODEL
    device: str
    dtype: str
    load_format: str
    max_model_len: int
    num_parameters: int
    vocab_size: int  # token ids the engine accepts: [0, vocab_size)
    eos_token_id: int | None
    max_batch_size: int
    tokenizer_dir: str
    memory_total: float  # bytes of the model's device (CPU: the machine's RAM or cgroup limit)
    memory_used: float  # bytes in use when it became ready (then: StepStats.memory_used)
    pid: int = 0  # of the engine process
    num_layers: int = 0  # the model's shape, for explain and embeddings
    num_heads: int = 0
    hidden_size: int = 0
    embedding_reference: str | None = None  # what standardises embeddings (GPT2_EMBEDDING_REFERENCE), if loaded
    cuda_graphs: list[int] = []  # the decode step's batch sizes captured as CUDA graphs (graphs.py); empty: none


def encoder() -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder()


def client_decoder() -> msgspec.msgpack.Decoder:
    """Decodes what the core sends to a client."""
    return msgspec.msgpack.Decoder(EngineOutputs)


def core_decoder(*extra: type) -> msgspec.msgpack.Decoder:
    """Decodes what clients send to the core (and `extra` message types: faults.py's, in tests)."""
    return msgspec.msgpack.Decoder(functools.reduce(operator.or_, extra, ClientMessage))
