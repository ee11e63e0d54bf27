"""The master's gRPC server on grpc.aio, run on its own event-loop thread.

Why: on the sync server every Borglet's Sync long-poll held one of 64 threads while it waited
(docs/PERFORMANCE.md, "Scale": Syncs capped near 64/s, status p99 27 s at 1,000 machines).
On this server a waiting Sync is a suspended coroutine (`BorgletLink.sync_async`), and every
other method is the same sync handler as before, run in `pool` by the one authorization
interceptor (`cfg.grpcauth.AioAuthInterceptor`: same table, identity and audit as the sync
`AuthInterceptor`).

The store's changes reach the loop through `Waiters.notify`, scheduled with
`call_soon_threadsafe` by the store's apply (which names the machines whose desired set
changed): one wake-up per changed machine, not one per waiting Borglet per change.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class RpcLoop:
    """An asyncio loop on a daemon thread; `call` runs a coroutine there and waits for it."""

    def __init__(self, name: str = "grpc-aio") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Awaitable[T], timeout: float | None = 30.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(_wrap(coro), self.loop)
        return fut.result(timeout)

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the loop (from any thread); nothing once the loop is closed."""
        if not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # closed between the check and the call
                pass

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


async def _wrap(coro: Awaitable[T]) -> T:
    return await coro


class Waiters:
    """Syncs waiting for their machine's desired set to change (loop side only)."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}

    def notify(self, machines: Iterable[str] | None) -> None:
        """These machines' desired sets changed (None: everyone's, e.g. leadership moved)."""
        names = list(self._waiting) if machines is None else machines
        for name in names:
            for fut in self._waiting.get(name, ()):
                if not fut.done():
                    fut.set_result(None)

    async def wait(self, machine: str, unchanged: Callable[[], bool], timeout: float) -> None:
        """Return once `unchanged()` is false (checked now and at each notify) or after
        `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while unchanged():
            left = deadline - loop.time()
            if left <= 0:
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiting.setdefault(machine, set()).add(fut)
            try:
                await asyncio.wait_for(fut, left)
            except TimeoutError:
                return
            finally:
                s = self._waiting.get(machine)
                if s is not None:
                    s.discard(fut)
                    if not s:
                        del self._waiting[machine]

    def count(self) -> int:
        return sum(len(s) for s in self._waiting.values())
