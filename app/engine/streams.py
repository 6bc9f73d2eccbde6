"""Stream routing, in an API process: each sequence's outputs, in order, to the RequestStream its
route reads, and the engine's stats to their listeners (metrics, request logs)."""

import asyncio
from collections import deque
from collections.abc import Callable

from app.engine.protocol import EngineOutputs, RequestOutput, RequestStats, StepStats


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


class StreamRouter:
    """The streams of the sequences this API process has in the engine, by request id. A stream
    leaves when its last output arrives, it is dropped, or it fails; `release(slot)` is called for
    each (its tenant's admission count)."""

    def __init__(self, release: Callable[[int], None]):
        self.release = release
        self.last_stats: StepStats | None = None  # the engine's latest (if this client records stats)
        self.step_listeners: list[Callable[[StepStats], None]] = []
        self.request_listeners: list[Callable[[RequestStats], None]] = []
        self._streams: dict[str, RequestStream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._streams

    def __iter__(self):
        return iter(list(self._streams))  # the request ids (a copy: dropping them while iterating is safe)

    def open(self, request_id: str, slot: int) -> RequestStream:
        stream = self._streams[request_id] = RequestStream(request_id, slot)
        return stream

    def drop(self, request_ids: list[str]) -> list[str]:
        """Forget these streams; returns the ids of those that were still open."""
        dropped = []
        for rid in request_ids:
            stream = self._streams.pop(rid, None)
            if stream is not None:
                self.release(stream.slot)
                dropped.append(rid)
        return dropped

    def dispatch(self, message: EngineOutputs) -> None:
        streams = self._streams
        for output in message.outputs:
            stream = streams.get(output.request_id)
            if stream is not None:
                stream.put(output)
                if output.finish_reason is not None:
                    del streams[output.request_id]
                    self.release(stream.slot)
            if output.stats is not None:
                for listener in self.request_listeners:
                    listener(output.stats)
        if message.stats is not None:
            self.last_stats = message.stats
            for listener in self.step_listeners:
                listener(message.stats)

    def fail_all(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.put(error)
            self.release(stream.slot)
        self._streams.clear()
