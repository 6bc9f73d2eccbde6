"""The engine core: requests in, one step at a time, outputs out. It runs in its own process,
on one thread, behind a ZeroMQ socket (`CoreServer`); the API processes reach it through
`EngineClient` (client.py), the only door.

    step() = schedule -> execute -> update
"""

import logging
import os
import threading
import time

import msgspec
import numpy as np
import zmq

from app.engine import faults
from app.engine.heartbeat import Heartbeat, StepSpeed
from app.engine.memory import device_memory_readers, release_free_memory
from app.engine.protocol import (
    AbortRequests,
    AddRequests,
    EngineOutputs,
    EngineRequest,
    FinishReason,
    Hello,
    RequestOutput,
    StepStats,
    core_decoder,
    encoder,
)
from app.engine.runner import ModelRunner
from app.engine.scheduler import Scheduler, SchedulerOutput
from app.engine.sequence import Sequence

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0  # seconds: a client with work in the engine hears from it at least this often
IDLE_POLL_MS = 1000  # an idle engine wakes up this often to check that its parent is alive


class EngineCore:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, seed: int = 0):
        self.runner = runner
        self.scheduler = scheduler
        self.fault: faults.Fault | None = None  # tests only (faults.py)
        self.running_step: tuple[float, int] | None = None  # (start, tokens) of the step executing now
        self._seeds = np.random.default_rng(seed)  # streams of requests that bring no seed

    # --- requests ----------------------------------------------------------------------------
    def add(self, request: EngineRequest) -> None:
        """Queue a sequence. Requests come validated by the client (validation.py)."""
        params = request.params
        seed = params.seed if params.seed is not None else int(self._seeds.integers(2**63))
        self.scheduler.add(Sequence(request.request_id, request.prompt_token_ids, params, seed, request.arrival_time,
                                    tenant=request.tenant, weight=request.weight))

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now; its slot is free for the next step. Returns its last output, or
        None if it had finished already."""
        seq = self.scheduler.find(request_id)
        if seq is None:
            return None
        self.scheduler.finish(seq, FinishReason.ABORT)
        return RequestOutput(request_id, finish_reason=FinishReason.ABORT, num_output_tokens=len(seq.output_token_ids),
                             stats=seq.stats)

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0

    # --- the step ----------------------------------------------------------------------------
    def step(self) -> tuple[list[RequestOutput], StepStats | None]:
        """Run one iteration; returns what it produced (at most one output per sequence) and its stats."""
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return [], None
        start = time.monotonic()
        self.running_step = (start, batch.num_tokens)  # read by the heartbeat thread (heartbeat.py)
        for seq, _ in batch.prefills:
            seq.scheduled_time = seq.scheduled_time or start
        try:
            if self.fault is not None:
                self.fault.strike(batch.num_tokens)
            result = self.runner.execute(batch)
        except Exception as exc:  # one bad step fails its own sequences, not the engine
            log.exception("engine step failed; failing its %d sequences", len(batch.decodes) + len(batch.prefills))
            return self.scheduler.fail(batch, f"{type(exc).__name__}: {exc}"), self.stats(batch, start)
        outputs, latencies = self.scheduler.update(batch, result)
        return outputs, self.stats(batch, start, latencies)

    def stats(self, batch: SchedulerOutput | None = None, start: float = 0.0,
              latencies: list[float] = ()) -> StepStats:
        """The step's stats and the engine's state after it; without a batch, the state alone."""
        s = self.scheduler
        if batch is None:
            return StepStats("idle", 0.0, 0, 0, 0, [], s.num_running, len(s.waiting), s.kv_cache_usage)
        return StepStats(batch.phase, time.monotonic() - start, len(batch.decodes) + len(batch.prefills),
                         batch.num_tokens - len(batch.decodes), len(batch.decodes), latencies, s.num_running,
                         len(s.waiting), s.kv_cache_usage, None, batch.queried_tokens, batch.hit_tokens,
                         batch.evictions)


class CoreServer:
    """The engine process's main loop: take what the clients sent, step, send each client its
    outputs. Clients are DEALER sockets; the ROUTER here knows each by its identity."""

    def __init__(self, core: EngineCore, address: str, device: str, parent_pid: int):
        self.core = core
        self.parent_pid = parent_pid
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.SNDHWM, 0)  # never drop or block on a slow client: it drains soon
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted API process reconnects under its old identity
        self.socket.bind(address)
        self.owners: dict[str, bytes] = {}  # request id -> the identity of the client that sent it
        self.last_sent: dict[bytes, float] = {}  # client identity -> when it last heard from us
        self.stats_client: bytes | None = None
        self._encode = encoder().encode
        self._decode = (core_decoder(faults.Fault) if faults.enabled() else core_decoder()).decode
        self._read_memory = device_memory_readers(device)[0]
        self._memory_read_at = 0.0
        self._reported_busy = False  # the stats client last heard of running or waiting sequences
        # the socket belongs to this loop except while a step runs: then heartbeats may use it
        self._lock = threading.Lock()
        self._speed = StepSpeed()
        Heartbeat(lambda: self.core.running_step, self._speed, self._lock, self._heartbeat).start()

    def run(self) -> None:
        """Serve until the process that started this one is gone."""
        self._lock.acquire()
        checked, was_busy = time.monotonic(), False
        while True:
            if time.monotonic() - checked >= 1.0:
                checked = time.monotonic()
                if os.getppid() != self.parent_pid:
                    log.warning("the server process is gone; the engine stops")
                    return
            self._receive(0 if self.core.has_unfinished() else IDLE_POLL_MS)
            if self.core.has_unfinished():
                self._send(*self._step())
                was_busy = True
                continue
            if self._reported_busy:  # e.g. aborts emptied the engine: the gauges must say so
                self._send([], self.core.stats())
            if was_busy:  # just went idle: give the steps' freed memory back
                release_free_memory()
                was_busy = False

    def _step(self) -> tuple[list[RequestOutput], StepStats | None]:
        self._lock.release()  # the heartbeat thread may speak while the step runs
        try:
            outputs, stats = self.core.step()
        finally:
            self._lock.acquire()
            self.core.running_step = None
        if stats is not None:
            self._speed.measured(stats)
        return outputs, stats

    def _heartbeat(self) -> None:
        """"Still working on yours", to every client with work here (from the heartbeat thread)."""
        now = time.monotonic()
        for identity in set(self.owners.values()):
            self.socket.send_multipart([identity, self._encode(EngineOutputs())])
            self.last_sent[identity] = now

    def _receive(self, timeout_ms: int) -> None:
        if not self.socket.poll(timeout_ms):
            return
        while True:
            try:
                identity, payload = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = self._decode(payload)
            except msgspec.DecodeError as exc:  # e.g. a Fault where faults are off: refused, not fatal
                log.warning("dropped a message the engine does not accept: %s", exc)
                continue
            self._handle(identity, message)

    def _handle(self, identity: bytes, message) -> None:
        if isinstance(message, AddRequests):
            for request in message.requests:
                try:
                    self.core.add(request)
                except ValueError as exc:  # a duplicate id: clients make them unique, but never crash on one
                    out = RequestOutput(request.request_id, finish_reason=FinishReason.ERROR, error=str(exc))
                    self.socket.send_multipart([identity, self._encode(EngineOutputs([out]))])
                    continue
                self.owners[request.request_id] = identity
        elif isinstance(message, AbortRequests):
            outputs = [out for rid in message.request_ids if (out := self.core.abort(rid)) is not None]
            if outputs:
                self._send(outputs, None)
        elif isinstance(message, Hello):
            # a client's first word: what its identity still owns here was left by a predecessor
            # (an API process that died and was restarted under the same identity): nobody waits for it
            for rid in [rid for rid, owner in self.owners.items() if owner == identity]:
                self.core.abort(rid)
                del self.owners[rid]
            self.last_sent[identity] = time.monotonic()
            if message.records_step_stats:
                self.stats_client = identity
        elif isinstance(message, faults.Fault):
            self.core.fault = message

    def _send(self, outputs: list[RequestOutput], stats: StepStats | None) -> None:
        by_client: dict[bytes, list[RequestOutput]] = {}
        for out in outputs:
            owner = self.owners[out.request_id] if out.finish_reason is None else self.owners.pop(out.request_id)
            by_client.setdefault(owner, []).append(out)
        now = time.monotonic()
        if stats is not None and self.stats_client is not None:
            if now - self._memory_read_at >= 1.0:
                stats.memory_used, self._memory_read_at = self._read_memory(), now
            by_client.setdefault(self.stats_client, [])
            self._reported_busy = bool(stats.num_running or stats.num_waiting)
        stale = [identity for identity, last in self.last_sent.items() if now - last >= HEARTBEAT_INTERVAL]
        if stale:  # heartbeats: "still working on yours" to clients with work here
            busy = set(self.owners.values())
            for identity in stale:
                if identity in busy:
                    by_client.setdefault(identity, [])
        for identity, outs in by_client.items():
            message = EngineOutputs(outs, stats if identity == self.stats_client else None)
            self.socket.send_multipart([identity, self._encode(message)])
            self.last_sent[identity] = now
