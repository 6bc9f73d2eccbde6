"""The engine client: the only door from the API to the engine core, which runs in a process of
its own (core.py). Everything the API, the metrics and the CLI need from the engine goes through
here: submitting sequences (validated once, admitted all together or not at all), aborting them,
their outputs as async iterators, the engine's stats, and whether it is alive.

    engine = await EngineClient.start(target, settings, max_queue=..., step_timeout=...)
    streams = engine.submit([EngineRequest(request_id, prompt_token_ids, params), ...])  # raises at once if refused
    try:
        async for output in streams[0]: ...
    finally:
        engine.close(streams)  # aborts what is still running (e.g. the client went away)

The door is one object made of parts with one job each: `Transport` (the socket, msgpack both
ways); admission (admission.py: every sequence counted for its tenant, an API key or a client
address, in a table all API processes share; submit() refuses with QueueFullError past the
engine's capacity unless the tenant is under its fair share, and the engine's queue serves tenants
in weighted fair order, fair_queue.py); stream routing (streams.py: outputs to their RequestStream,
stats to their listeners); supervision (supervision.py: the engine process, its liveness; on a
death every stream in flight ends with EngineDeadError and the death listeners hear the reason).
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import zmq
import zmq.asyncio

from app.engine.admission import Admission, ShareTable, Tenant
from app.engine.protocol import (
    AbortRequests,
    AddRequests,
    EngineInfo,
    EngineOutputs,
    EngineRequest,
    Hello,
    StepStats,
    client_decoder,
    encoder,
)
from app.engine.streams import RequestStream, StreamRouter
from app.engine.supervision import EngineDeadError, EngineProcess, Supervisor
from app.engine.validation import validate_sequence

ANONYMOUS = Tenant("", "default", 0)  # who submits when no tenant is named


@dataclass(frozen=True)
class EngineHandle:
    """How an API process that did not start the engine reaches it (GPT2_API_SERVERS > 1)."""

    address: str
    info: EngineInfo
    records_step_stats: bool  # exactly one API process records the engine's step stats
    row: int = 0  # this API process's number: its row of the share table, its identity at the engine
    shares_path: str | None = None  # the share table's file (admission.py)


class Transport:
    """The client's end of the engine's socket: a DEALER (under `identity`, if given), msgpack both ways."""

    def __init__(self, address: str, identity: bytes | None = None):
        self._encode, self._decode = encoder().encode, client_decoder().decode
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        if identity is not None:
            self._socket.setsockopt(zmq.IDENTITY, identity)
        self._socket.setsockopt(zmq.SNDHWM, 0)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(address)

    def send(self, message) -> None:
        # never waits: the send queue is unbounded, so this completes (or fails) at once, and
        # pyzmq rechecks the socket for waiting receives afterwards
        self._socket.send(self._encode(message), zmq.NOBLOCK).result()

    async def receive(self) -> EngineOutputs:
        return self._decode(await self._socket.recv())

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()


class EngineClient:
    """The door (see the module's docstring); the routes use submit, close and admission."""

    def __init__(self, info: EngineInfo, address: str, *, max_queue: int, step_timeout: float,
                 records_step_stats: bool = True, process: EngineProcess | None = None,
                 admission: Admission | None = None, identity: bytes | None = None):
        self.info = info
        # sequences in flight (running + waiting), counted per tenant across every API process
        self.admission = admission or Admission(ShareTable(1, 1), 0, info.max_batch_size + max_queue,
                                                np.ones(1), fair=False)
        self.streams = StreamRouter(self.admission.release)
        # a restarted API process takes its predecessor's identity (and its sequences at the engine)
        self.transport = Transport(address, identity)
        self.transport.send(Hello(records_step_stats))
        self.supervisor = Supervisor(info, step_timeout, process, in_flight=self.streams.__len__)
        self.supervisor.death_listeners.append(lambda reason: self.streams.fail_all(EngineDeadError(reason)))
        # who hears of what: the parts' own lists (metrics and the lifecycle append to them)
        self.step_listeners, self.request_listeners = self.streams.step_listeners, self.streams.request_listeners
        self.death_listeners = self.supervisor.death_listeners
        self.loop = asyncio.get_running_loop()
        self._receiving = self.loop.create_task(self._receive())

    @classmethod
    async def start(cls, target: Callable, *args, max_queue: int, step_timeout: float,
                    admission: Admission | None = None) -> "EngineClient":
        """Start an engine core process (see EngineProcess.start) and connect to it; this client
        owns the process and stops it in shutdown()."""
        process = await EngineProcess.start(target, *args)
        return cls(process.info, process.address, max_queue=max_queue, step_timeout=step_timeout, process=process,
                   admission=admission)

    @classmethod
    async def connect(cls, handle: EngineHandle, *, max_queue: int, step_timeout: float,
                      admission: Admission | None = None) -> "EngineClient":
        """Connect to an engine started by another process (which supervises it) as API process
        number handle.row: a restarted process takes over what its predecessor left in the engine."""
        return cls(handle.info, handle.address, max_queue=max_queue, step_timeout=step_timeout,
                   records_step_stats=handle.records_step_stats, admission=admission,
                   identity=f"api-{handle.row}".encode())

    # --- requests ----------------------------------------------------------------------------
    def submit(self, requests: list[EngineRequest], tenant: Tenant | None = None) -> list[RequestStream]:
        """Queue these sequences all together, or none of them, for `tenant` (None: an anonymous
        caller in slot 0); stamps each with its arrival time and tenant. Raises InvalidRequestError
        (from validation.py) if one can never run, QueueFullError (admission.py) if the engine is at
        capacity, or this tenant past its share of it, EngineDeadError if the engine is gone."""
        if self.supervisor.dead is not None:
            raise EngineDeadError(self.supervisor.dead)
        for request in requests:
            validate_sequence(request.prompt_token_ids, request.params, self.info)
            if request.request_id in self.streams:
                raise ValueError(f"request id {request.request_id!r} is already running")
        tenant = tenant or ANONYMOUS
        self.admission.admit(tenant, len(requests))
        if not self.streams:
            self.supervisor.heard()  # the engine had nothing to say until now
        now = time.monotonic()
        name = tenant.name if self.admission.fair else ""  # the same for all: the engine's queue is then FIFO
        for request in requests:
            request.arrival_time, request.tenant, request.weight = now, name, tenant.weight
        self.transport.send(AddRequests(requests))
        return [self.streams.open(request.request_id, tenant.slot) for request in requests]

    def close(self, streams: list[RequestStream]) -> None:
        """Abort every stream of these that has not finished (a no-op for finished ones)."""
        unfinished = [s.request_id for s in streams if not s.finished]
        for stream in streams:
            stream.finished = True
        self.abort(unfinished)

    def abort(self, request_ids: list[str]) -> None:
        """Stop these sequences; their streams end at once. Their aborts' stats still arrive."""
        ids = self.streams.drop(request_ids)
        if ids and self.supervisor.dead is None:
            self.transport.send(AbortRequests(ids))

    def abort_all(self) -> None:
        """Stop every sequence this client has in the engine (the end of a drain)."""
        self.abort(list(self.streams))

    # --- state, stats and listeners (the parts' own) ---------------------------------------------
    @property
    def num_unfinished(self) -> int:
        """Sequences this client has in the engine."""
        return len(self.streams)

    @property
    def is_alive(self) -> bool:
        return self.supervisor.dead is None

    @property
    def last_stats(self) -> StepStats | None:
        return self.streams.last_stats

    async def _receive(self) -> None:
        while True:
            message = await self.transport.receive()
            self.supervisor.heard()
            self.streams.dispatch(message)

    async def shutdown(self) -> None:
        """Disconnect; stop the engine process if this client started it."""
        self.streams.fail_all(EngineDeadError(self.supervisor.dead or "the engine was stopped"))
        self._receiving.cancel()
        await self.supervisor.stop()
        self.transport.close()
