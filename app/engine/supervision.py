"""Supervision, in an API process: starting the engine core's process, and knowing whether it
lives. A long step is not taken for a hang: the engine sends heartbeats while a step runs as long
as its size makes likely (heartbeat.py)."""

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable

from app.engine.protocol import EngineInfo

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.25  # seconds between liveness checks


class EngineDeadError(RuntimeError):
    """The engine core is not running (it died, stopped answering, or was stopped)."""


class EngineStartError(RuntimeError):
    """The engine core could not start (e.g. the model failed to load); the message says why."""


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


class Supervisor:
    """Declares the engine dead, once, with the reason, to the death listeners (the client fails
    its streams, the API turns its probes to 503 and exits): its process ended (`process`: this
    API process started it and watches its sentinel), its pid is gone (another process started
    it), or it fell silent for `step_timeout` seconds while `in_flight()` sequences wait (hung).
    Call `heard()` on every message."""

    def __init__(self, info: EngineInfo, step_timeout: float, process: EngineProcess | None,
                 in_flight: Callable[[], int]):
        self.info, self.step_timeout, self.process, self.in_flight = info, step_timeout, process, in_flight
        self.dead: str | None = None  # why the engine is gone, once it is
        self.death_listeners: list[Callable[[str], None]] = []
        self.last_heard = time.monotonic()
        loop = asyncio.get_running_loop()
        self._watching = loop.create_task(self._watch())
        if process is not None:
            loop.add_reader(process.process.sentinel, self._on_process_exit)

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    async def _watch(self) -> None:
        while self.dead is None:
            await asyncio.sleep(WATCH_INTERVAL)
            silent = time.monotonic() - self.last_heard
            if self.in_flight() and silent > self.step_timeout:
                self.die(f"the engine stopped answering: no step finished in {silent:.0f} s "
                         f"(GPT2_STEP_TIMEOUT={self.step_timeout:g})")
            elif self.process is None and not _pid_alive(self.info.pid):
                self.die(f"the engine process (pid {self.info.pid}) is gone")

    def _on_process_exit(self) -> None:
        process = self.process.process
        asyncio.get_running_loop().remove_reader(process.sentinel)
        process.join(1)
        if self.dead is None:
            self.die(f"the engine process died (exit code {process.exitcode})")

    def die(self, reason: str) -> None:
        if self.dead is not None:
            return
        self.dead = reason
        log.critical("%s; failing %d sequences in flight", reason, self.in_flight())
        for listener in self.death_listeners:
            listener(reason)
        if self.process is not None:
            self.process.stop()  # a hung engine must not linger

    async def stop(self) -> None:
        """Stop watching; stop the engine process if this API process started it."""
        if self.dead is None:
            self.dead = "the engine was stopped"
        self._watching.cancel()
        if self.process is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.process.process.sentinel)
            await asyncio.to_thread(self.process.stop)


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
