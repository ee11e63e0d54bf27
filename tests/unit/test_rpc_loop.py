"""The master's grpc.aio server pieces (borgmaster/rpc_loop.py, cfg/grpcauth.py
`AioAuthInterceptor`): waiting Syncs woken per machine, and sync handlers run in a pool with
the sync server's context semantics (abort, is_active, add_callback on a client's cancel,
the identity), next to async handlers that hold no thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

from borgmaster.rpc_loop import RpcLoop, Waiters
from cfg.grpcauth import AioAuthInterceptor, AuthInterceptor, Rule, identity
from cfg.tls import INSECURE, Role


def test_a_waiter_wakes_for_its_machine_only_and_times_out() -> None:
    async def main() -> None:
        w = Waiters()
        gen = {"a": 1, "b": 1}
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        ta = asyncio.create_task(w.wait("a", lambda: gen["a"] == 1, 5.0))
        tb = asyncio.create_task(w.wait("b", lambda: gen["b"] == 1, 0.2))
        await asyncio.sleep(0.05)
        assert w.count() == 2
        gen["a"] = 2
        w.notify({"a"})
        await ta
        assert loop.time() - t0 < 1.0 and not tb.done()
        await tb  # nobody notified b: it returns at its timeout
        assert 0.15 < loop.time() - t0 < 1.0
        assert w.count() == 0
        # a notify that changes nothing keeps it waiting; None wakes everyone
        tc = asyncio.create_task(w.wait("c", lambda: gen["a"] == 2, 5.0))
        await asyncio.sleep(0.02)
        w.notify({"c"})
        await asyncio.sleep(0.02)
        assert not tc.done()
        gen["a"] = 3
        w.notify(None)
        await asyncio.wait_for(tc, 1.0)

    asyncio.run(main())


class Handlers:
    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.stream_ended = threading.Event()
        self.threads: set[str] = set()

    def unary(self, request: bytes, context: Any) -> bytes:
        self.threads.add(threading.current_thread().name)
        if request == b"abort":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")
        assert identity(context) is INSECURE
        return b"ok:" + request

    def follow(self, request: bytes, context: Any) -> Iterator[bytes]:
        context.add_callback(self.cancelled.set)
        try:
            while context.is_active():
                yield b"x"
                time.sleep(0.01)
        finally:  # the loop saw is_active() False, or the server closed the stream at a yield
            self.stream_ended.set()

    def echo(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for r in requests:
            yield r + b"!"

    async def wait(self, request: bytes, context: Any) -> bytes:
        await asyncio.sleep(0.3)
        return b"waited"


@pytest.fixture
def server() -> Iterator[tuple[str, Handlers]]:
    h = Handlers()
    pool = futures.ThreadPoolExecutor(2, thread_name_prefix="pool")
    rules = {"Unary": Rule(frozenset({Role.ADMIN}), "call")}
    auth = AuthInterceptor(rules, tls=False, closed_services=("t.T",))
    rl = RpcLoop()

    async def build() -> tuple[grpc.aio.Server, int]:
        s = grpc.aio.server(
            migration_thread_pool=pool, interceptors=[AioAuthInterceptor(auth, pool)]
        )
        s.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "t.T",
                    {
                        "Unary": grpc.unary_unary_rpc_method_handler(h.unary),
                        "Follow": grpc.unary_stream_rpc_method_handler(h.follow),
                        "Echo": grpc.stream_stream_rpc_method_handler(h.echo),
                        "Wait": grpc.unary_unary_rpc_method_handler(h.wait),
                    },
                ),
            )
        )
        port = s.add_insecure_port("127.0.0.1:0")
        await s.start()
        return s, port

    srv, port = rl.call(build())
    try:
        yield f"127.0.0.1:{port}", h
    finally:
        rl.call(srv.stop(None))
        rl.close()
        pool.shutdown(wait=False)


def test_sync_handlers_keep_the_sync_servers_semantics(server: tuple[str, Handlers]) -> None:
    addr, h = server
    ch = grpc.insecure_channel(addr)
    assert ch.unary_unary("/t.T/Unary")(b"a", timeout=5) == b"ok:a"
    assert h.threads and all(t.startswith("pool") for t in h.threads)
    with pytest.raises(grpc.RpcError) as e:
        ch.unary_unary("/t.T/Unary")(b"abort", timeout=5)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and e.value.details() == "no"
    assert list(ch.stream_stream("/t.T/Echo")(iter([b"a", b"b"]), timeout=5)) == [b"a!", b"b!"]
    # a client that cancels a stream: the handler's callback runs and its loop ends
    call = ch.unary_stream("/t.T/Follow")(b"", timeout=10)
    next(call)
    call.cancel()
    assert h.cancelled.wait(5) and h.stream_ended.wait(5)


def test_async_handlers_wait_without_a_thread(server: tuple[str, Handlers]) -> None:
    addr, _ = server
    ch = grpc.insecure_channel(addr)
    # ten waits at once on a 2-thread pool: they overlap (no thread held while waiting)
    calls = [ch.unary_unary("/t.T/Wait").future(b"", timeout=10) for _ in range(10)]
    t0 = time.monotonic()
    assert all(c.result() == b"waited" for c in calls)
    assert time.monotonic() - t0 < 1.2
    assert ch.unary_unary("/t.T/Unary")(b"b", timeout=5) == b"ok:b"
