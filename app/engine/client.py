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

Admission (admission.py): every sequence is counted for its tenant (an API key or a client
address) in a table all API processes share; submit() refuses with QueueFullError past the engine's
capacity, unless the tenant is under its fair share. The tenant travels with each sequence to the
engine, whose waiting queue serves tenants in weighted fair order (fair_queue.py).

Supervision: a client that started the engine process watches it end (its sentinel); any client
watches that it answers: with sequences in flight and no message for `step_timeout` seconds the
engine is declared hung (the engine keeps sending heartbeats while a step runs as long as its size
makes likely, so a long step is not taken for a hang). Either way every stream in flight ends with
EngineDeadError, and the death listeners hear of it (the API turns its probes to 503 and exits).
"""

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import deque
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
    Fault,
    Hello,
    RequestOutput,
    RequestStats,
    StepStats,
    client_decoder,
    encoder,
)
from app.engine.validation import validate_sequence

log = logging.getLogger(__name__)

ANONYMOUS = Tenant("", "default", 0)  # who submits when no tenant is named
WATCH_INTERVAL = 0.25  # seconds between liveness checks


class EngineDeadError(RuntimeError):
    """The engine core is not running (it died, stopped answering, or was stopped)."""


class EngineStartError(RuntimeError):
    """The engine core could not start (e.g. the model failed to load); the message says why."""


@dataclass(frozen=True)
class EngineHandle:
    """How an API process that did not start the engine reaches it (GPT2_API_SERVERS > 1)."""

    address: str
    info: EngineInfo
    records_step_stats: bool  # exactly one API process records the engine's step stats
    row: int = 0  # this API process's number: its row of the share table, its identity at the engine
    shares_path: str | None = None  # the share table's file (admission.py)


class RequestStream:
    """Outputs of one sequence, in order; the last one has finish_reason set. Iterating raises
    EngineDeadError if the engine dies first. (A deque and one future per wait: an asyncio.Queue
    costs twice as much per token.)"""

    __slots__ = ("request_id", "slot", "finished", "_items", "_waiter")

    def __init__(self, request_id: str, slot: int = 0):
        self.request_id = request_id
        self.slot = slot  # its tenant's column in the share table
        self.finished = False
        self._items: deque[RequestOutput | BaseException] = deque()
        self._waiter: asyncio.Future | None = None

    def put(self, item: RequestOutput | BaseException) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        if not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.finished = item.finish_reason is not None
        return item


class EngineProcess:
    """The engine core's process, as seen by the process that started it."""

    def __init__(self, process: multiprocessing.Process, address: str, info: EngineInfo, directory: str):
        self.process, self.address, self.info, self._directory = process, address, info, directory

    @classmethod
    async def start(cls, target: Callable, *args) -> "EngineProcess":
        """Spawn `target(*args, address, ready_connection, parent_pid)` and wait until it reports
        ready (its EngineInfo) or fails. Cancelling the wait (e.g. SIGTERM while the model loads)
        kills the process at once."""
        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds threads
        directory = tempfile.mkdtemp(prefix="gpt2-serve-", dir="/tmp" if os.path.isdir("/tmp") else None)
        address = f"ipc://{directory}/engine"
        reader, writer = ctx.Pipe(duplex=False)
        process = ctx.Process(target=target, args=(*args, address, writer, os.getpid()), name="gpt2-engine-core",
                              daemon=True)
        process.start()
        writer.close()
        try:
            while not reader.poll():
                await asyncio.sleep(0.02)
            try:
                status, payload = reader.recv()
            except EOFError:
                process.join(5)
                raise EngineStartError(f"the engine process exited with code {process.exitcode} while "
                                       "starting (see its log above)") from None
        except BaseException:
            _kill(process)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        finally:
            reader.close()
        if status != "ready":
            process.join(10)
            shutil.rmtree(directory, ignore_errors=True)
            raise EngineStartError(payload)
        payload.pid = process.pid
        return cls(process, address, payload, directory)

    def stop(self) -> None:
        _kill(self.process)
        shutil.rmtree(self._directory, ignore_errors=True)


def _kill(process: multiprocessing.Process) -> None:
    """SIGKILL: the engine ignores SIGTERM (see run_engine_core) and holds nothing worth saving."""
    if process.is_alive():
        process.kill()
    process.join(5)


class EngineClient:
    def __init__(self, info: EngineInfo, address: str, *, max_queue: int, step_timeout: float,
                 records_step_stats: bool = True, process: EngineProcess | None = None,
                 admission: Admission | None = None, identity: bytes | None = None):
        self.info = info
        # sequences in flight (running + waiting), counted per tenant across every API process
        self.admission = admission or Admission(ShareTable(1, 1), 0, info.max_batch_size + max_queue,
                                                np.ones(1), fair=False)
        self.step_timeout = step_timeout
        self.dead: str | None = None  # why the engine is gone, once it is
        self.last_stats: StepStats | None = None  # the engine's latest (if this client records stats)
        self.step_listeners: list[Callable[[StepStats], None]] = []
        self.request_listeners: list[Callable[[RequestStats], None]] = []
        self.death_listeners: list[Callable[[str], None]] = []
        self._process = process
        self._streams: dict[str, RequestStream] = {}
        self._last_heard = time.monotonic()
        self._encode = encoder().encode
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        if identity is not None:  # a restarted API process takes its predecessor's place (and sequences)
            self._socket.setsockopt(zmq.IDENTITY, identity)
        self._socket.setsockopt(zmq.SNDHWM, 0)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(address)
        self._send(Hello(records_step_stats))
        self._loop = loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._receive()), loop.create_task(self._watch())]
        if process is not None:
            loop.add_reader(process.process.sentinel, self._on_process_exit)

    @property
    def capacity(self) -> int:
        """Sequences the engine holds (running slots + GPT2_MAX_QUEUE), over every API process."""
        return self.admission.capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self.admission.capacity = value

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
        if self.dead is not None:
            raise EngineDeadError(self.dead)
        for request in requests:
            validate_sequence(request.prompt_token_ids, request.params, self.info)
            if request.request_id in self._streams:
                raise ValueError(f"request id {request.request_id!r} is already running")
        tenant = tenant or ANONYMOUS
        self.admission.admit(tenant, len(requests))
        if not self._streams:
            self._last_heard = time.monotonic()  # the engine had nothing to say until now
        now = time.monotonic()
        name = tenant.name if self.admission.fair else ""  # the same for all: the engine's queue is then FIFO
        for request in requests:
            request.arrival_time, request.tenant, request.weight = now, name, tenant.weight
        streams = [RequestStream(request.request_id, tenant.slot) for request in requests]
        self._send(AddRequests(requests))
        for stream in streams:
            self._streams[stream.request_id] = stream
        return streams

    def close(self, streams: list[RequestStream]) -> None:
        """Abort every stream of these that has not finished (a no-op for finished ones)."""
        unfinished = [s.request_id for s in streams if not s.finished]
        for stream in streams:
            stream.finished = True
        self.abort(unfinished)

    def abort(self, request_ids: list[str]) -> None:
        """Stop these sequences; their streams end at once. Their aborts' stats still arrive."""
        ids = []
        for rid in request_ids:
            stream = self._streams.pop(rid, None)
            if stream is not None:
                self.admission.release(stream.slot)
                ids.append(rid)
        if ids and self.dead is None:
            self._send(AbortRequests(ids))

    def inject(self, fault: Fault) -> None:
        """Make the engine misbehave (tests and chaos drills only; may be called from any thread)."""
        self._loop.call_soon_threadsafe(self._send, fault)

    @property
    def num_unfinished(self) -> int:
        """Sequences this client has in the engine."""
        return len(self._streams)

    @property
    def is_alive(self) -> bool:
        return self.dead is None

    # --- messages and supervision --------------------------------------------------------------
    def _send(self, message) -> None:
        # never waits: the send queue is unbounded, so this completes (or fails) at once, and
        # pyzmq rechecks the socket for waiting receives afterwards
        self._socket.send(self._encode(message), zmq.NOBLOCK).result()

    async def _receive(self) -> None:
        decode = client_decoder().decode
        while True:
            self._dispatch(decode(await self._socket.recv()))

    def _dispatch(self, message: EngineOutputs) -> None:
        self._last_heard = time.monotonic()
        streams = self._streams
        for output in message.outputs:
            stream = streams.get(output.request_id)
            if stream is not None:
                stream.put(output)
                if output.finish_reason is not None:
                    del streams[output.request_id]
                    self.admission.release(stream.slot)
            if output.stats is not None:
                for listener in self.request_listeners:
                    listener(output.stats)
        if message.stats is not None:
            self.last_stats = message.stats
            for listener in self.step_listeners:
                listener(message.stats)

    async def _watch(self) -> None:
        """Declare the engine dead if it stops answering, or (when not ours to watch directly)
        if its process is gone."""
        while self.dead is None:
            await asyncio.sleep(WATCH_INTERVAL)
            silent = time.monotonic() - self._last_heard
            if self._streams and silent > self.step_timeout:
                self._die(f"the engine stopped answering: no step finished in {silent:.0f} s "
                          f"(GPT2_STEP_TIMEOUT={self.step_timeout:g})")
            elif self._process is None and not _pid_alive(self.info.pid):
                self._die(f"the engine process (pid {self.info.pid}) is gone")

    def _on_process_exit(self) -> None:
        process = self._process.process
        asyncio.get_running_loop().remove_reader(process.sentinel)
        process.join(1)
        if self.dead is None:
            self._die(f"the engine process died (exit code {process.exitcode})")

    def _die(self, reason: str) -> None:
        if self.dead is not None:
            return
        self.dead = reason
        log.critical("%s; failing %d sequences in flight", reason, len(self._streams))
        self._fail_all(reason)
        for listener in self.death_listeners:
            listener(reason)
        if self._process is not None:
            self._process.stop()  # a hung engine must not linger

    def _fail_all(self, reason: str) -> None:
        for stream in self._streams.values():
            stream.put(EngineDeadError(reason))
            self.admission.release(stream.slot)
        self._streams.clear()

    async def shutdown(self) -> None:
        """Disconnect; stop the engine process if this client started it."""
        if self.dead is None:
            self.dead = "the engine was stopped"
        self._fail_all(self.dead)
        for task in self._tasks:
            task.cancel()
        if self._process is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._process.process.sentinel)
            await asyncio.to_thread(self._process.stop)
        self._socket.close(linger=0)
        self._context.term()


def _pid_alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
