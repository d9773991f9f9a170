"""Loopback helpers: a real aiohttp server on 127.0.0.1 in a thread of its own for the length
of a test, and the 'model' the loopback vision APIs serve in tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import torch
from aiohttp import web


def brightness(images: torch.Tensor) -> list[list[tuple[str, float]]]:
    """Ranked labels per image: "bright" or "dark" by mean pixel value (scores sum to 1)."""
    means = images.flatten(1).mean(1).tolist()
    return [[("bright", m), ("dark", 1 - m)] if m >= 0.5 else [("dark", 1 - m), ("bright", m)]
            for m in means]  # fmt: skip


@contextlib.contextmanager
def serve(app: web.Application) -> Iterator[str]:
    """Serve ``app`` on an ephemeral loopback port; yields its base URL."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def start() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"] = runner
        box["port"] = site._server.sockets[0].getsockname()[1]
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert started.wait(10), "loopback server did not start"
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
