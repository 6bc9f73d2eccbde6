"""The asyncio face of the engine: the step loop runs in its own thread, and each request is an
async iterator of its outputs.

    engine = AsyncEngine()
    engine.start(await engine.call(build))  # build the Engine on the engine thread, then run it
    stream = engine.add_request(request_id, prompt_token_ids, params)  # raises at once if refused
    try:
        async for output in stream: ...
    finally:
        stream.close()  # aborts the request if it is still running (e.g. the client went away)
"""

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from app.engine.engine import Engine
from app.engine.sequence import FinishReason, RequestOutput, SamplingParams

log = logging.getLogger(__name__)
T = TypeVar("T")


class EngineDeadError(RuntimeError):
    """The step loop has stopped; no request can be served."""


class RequestStream:
    """Outputs of one request, in order; the last one has finish_reason set."""

    def __init__(self, request_id: str, engine: "AsyncEngine"):
        self.request_id = request_id
        self.finished = False
        self._engine = engine
        self._queue: asyncio.Queue[RequestOutput] = asyncio.Queue()

    def put(self, output: RequestOutput) -> None:
        self._queue.put_nowait(output)

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        output = await self._queue.get()
        self.finished = output.finished
        return output

    def close(self) -> None:
        """Abort the request unless it has finished."""
        if not self.finished:
            self.finished = True
            self._engine.abort(self.request_id)


class AsyncEngine:
    def __init__(self) -> None:
        # One thread does all the torch work, loading included: OpenMP keeps a thread team per
        # calling thread, and with a second team alive (say, the loader's) libgomp counts more
        # threads than cores and cuts its spin-wait, which costs ~10% per step (bench/engine.py).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.engine: Engine | None = None
        self._streams: dict[str, RequestStream] = {}
        self._wakeup = threading.Event()
        self._stopping = False
        self._running: Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def call(self, fn: Callable[..., T], *args) -> T:
        """Run fn(*args) on the engine thread (e.g. build the engine there) before start()."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def start(self, engine: Engine) -> None:
        """Run the step loop on the engine thread; call from the event loop that consumes outputs."""
        self.engine = engine
        self._loop = asyncio.get_running_loop()
        self._running = self._executor.submit(self._run)

    def stop(self) -> None:
        """Stop the loop after the current step; unfinished requests are aborted."""
        self._stopping = True
        self._wakeup.set()
        if self._running is not None:
            self._running.result()
        self._executor.shutdown()
        for request_id in list(self._streams):
            self.abort(request_id)

    @property
    def is_alive(self) -> bool:
        return self._running is not None and not self._running.done() and not self._stopping

    @property
    def num_unfinished(self) -> int:
        return len(self._streams)

    # --- requests ----------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> RequestStream:
        """Submit a request. Raises InvalidRequestError or QueueFullError at once if refused,
        EngineDeadError if the loop is not running, ValueError for a duplicate id."""
        if not self.is_alive:
            raise EngineDeadError("the engine is not running")
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already running")
        stream = RequestStream(request_id, self)
        self.engine.add_request(request_id, prompt_token_ids, params)
        self._streams[request_id] = stream
        self._wakeup.set()
        return stream

    def abort(self, request_id: str) -> None:
        """Stop a request; its stream ends with finish_reason abort."""
        output = self.engine.abort(request_id)
        if output is not None:
            self._deliver([output])

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            stream.put(output)
            if output.finished:
                del self._streams[output.request_id]

    # --- the loop thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                if not self.engine.has_unfinished():
                    self._wakeup.wait()
                    self._wakeup.clear()
                    continue
                outputs = self.engine.step()
                if outputs:
                    self._loop.call_soon_threadsafe(self._deliver, outputs)
        except BaseException as exc:  # never reached by a failing step: the engine absorbs those
            log.exception("the engine loop died")
            self._loop.call_soon_threadsafe(self._fail_all, f"the engine loop died: {exc!r}")

    def _fail_all(self, message: str) -> None:
        outputs = [RequestOutput(rid, finish_reason=FinishReason.ERROR, error=message) for rid in self._streams]
        self._deliver(outputs)
