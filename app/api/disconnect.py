"""Noticing that a client went away while its request is being worked on."""

import asyncio

from fastapi import Request


async def until_done_or_disconnected(work, request: Request) -> None:
    """Await `work`, but give up (and let the caller abort) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            raise asyncio.CancelledError("client disconnected")
        task.result()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
