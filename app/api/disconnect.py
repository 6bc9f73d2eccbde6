"""Waiting for a request's work: until it is done, the client goes away, or its deadline passes."""

import asyncio

from fastapi import Request

from app.api.errors import APIError
from app.config import Settings


def time_limit(settings: Settings, asked: float | None) -> float:
    """Seconds a request may take: GPT2_REQUEST_TIMEOUT, or less if the request asks for less."""
    return settings.request_timeout if asked is None else min(asked, settings.request_timeout)


class ClientDisconnected(Exception):
    """The client went away while its request was worked on: nobody to answer (see context.py)."""


def timed_out(seconds: float) -> APIError:
    return APIError(504, f"the request did not finish within {seconds:g} s (its `timeout`, or GPT2_REQUEST_TIMEOUT) "
                    "and was stopped; ask for less work or a longer timeout", code="timeout")


async def until_done_or_disconnected(work, request: Request, timeout: float):
    """Await `work` and return its result, but give up (and let the caller abort) if the client
    goes away, or with a 504 if it takes longer than `timeout` seconds."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise timed_out(timeout)
        if task not in done:
            task.cancel()
            raise ClientDisconnected()
        return task.result()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
