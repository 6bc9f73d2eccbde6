"""The messages between the engine client (API process) and the engine core (its own process).

Plain msgspec Structs over a ZeroMQ ROUTER (core) / DEALER (clients) pair of sockets, msgpack on
the wire: requests and aborts go in; each step's outputs, with the step's stats, come out, one
message per client per step.
"""

import os
import time

import msgspec

from app.engine.sequence import RequestOutput, SamplingParams
from app.engine.stats import StepStats


class EngineRequest(msgspec.Struct, array_like=True):
    """One sequence to run (a prompt and its parameters)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float  # time.monotonic() when the API received it
    tenant: str = ""  # who it is for ("key:3", "addr:10.0.0.7"; never a secret): the fair queue's groups
    weight: float = 1.0  # the tenant's weight in the fair queue


class AddRequests(msgspec.Struct, tag="add", array_like=True):
    """Sequences queued together (all the choices and inputs of one HTTP request)."""

    requests: list[EngineRequest]


class AbortRequests(msgspec.Struct, tag="abort", array_like=True):
    request_ids: list[str]


class Hello(msgspec.Struct, tag="hello", array_like=True):
    """A client's first message. The one client that records the engine's step stats (the API
    process that serves /metrics for them) says so."""

    records_step_stats: bool = True


class Fault(msgspec.Struct, tag="fault", array_like=True, omit_defaults=True):
    """For tests and chaos drills: make the engine misbehave from its next step on."""

    step_delay: float = 0.0  # seconds added to every step
    token_delay: float = 0.0  # seconds added to a step per token it holds (a slow model: long steps are big ones)
    failing_steps: int = 0  # this many steps raise
    hang: float = 0.0  # the next step blocks this long
    exit_code: int | None = None  # the engine process exits at once, with this code

    def strike(self, tokens: int = 0) -> None:
        """Called before each step's forward pass, with the step's number of tokens."""
        if self.exit_code is not None:
            os._exit(self.exit_code)
        if self.hang:
            hang, self.hang = self.hang, 0.0
            time.sleep(hang)
        if self.step_delay or self.token_delay:
            time.sleep(self.step_delay + self.token_delay * tokens)
        if self.failing_steps:
            self.failing_steps -= 1
            raise RuntimeError("injected fault")


ClientMessage = AddRequests | AbortRequests | Hello | Fault


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


def core_decoder() -> msgspec.msgpack.Decoder:
    """Decodes what clients send to the core."""
    return msgspec.msgpack.Decoder(ClientMessage)
