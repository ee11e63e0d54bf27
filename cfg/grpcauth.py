"""gRPC's side of the cell's identities: channels that present a certificate and verify the
server's role, and the one server interceptor that turns the peer certificate into an
`Identity` and applies an authorization table (SPEC part 2, "Authorization").

Handlers never read who is calling from a request field: they call `identity(context)`,
which reads the TLS peer (or the relaying master's statement, for a master only).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import grpc.aio

from cfg.tls import (
    INSECURE,
    NAME_RE,
    Identity,
    Role,
    TlsDir,
    identity_from_names,
    machine_host,
    role_host,
)

log = logging.getLogger("borg.auth")

ON_BEHALF_HEADER = "borg-on-behalf-of"
"""Metadata a master sets when it relays a caller's request to another replica (`NAME/ROLE`);
honoured only when the peer's own certificate is a master's."""

IDENTITY_ATTR = "_borg_identity"


def secure_channel(
    addr: str,
    tls: TlsDir | None,
    server_role: Role = Role.MASTER,
    machine: str = "",
    options: list[tuple[str, Any]] | None = None,
) -> grpc.Channel:
    """A channel to ADDR: mTLS with `tls` (the server must hold a `server_role` certificate,
    for a Borglet that of `machine` when given), or plaintext when `tls` is None."""
    opts = list(options or [])
    if tls is None:
        return grpc.insecure_channel(addr, options=opts)
    expected = machine_host(machine) if machine else role_host(server_role)
    opts.append(("grpc.ssl_target_name_override", expected))
    creds = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
    return grpc.secure_channel(addr, creds, options=opts)


def server_credentials(tls: TlsDir) -> grpc.ServerCredentials:
    """mTLS: a client without a certificate from the cell CA never completes a handshake."""
    return grpc.ssl_server_credentials(
        [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
    )


def _peer(context: grpc.ServicerContext) -> Identity | None:
    auth = context.auth_context() or {}
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    cns = [v.decode(errors="replace") for v in auth.get("x509_common_name", [])]
    sans = [v.decode(errors="replace") for v in auth.get("x509_subject_alternative_name", [])]
    return identity_from_names(cns, sans)


def _relayed(peer: Identity, metadata: Any) -> Identity:
    """A master may state whom it relays for; anyone else's statement is ignored."""
    if peer.role is not Role.MASTER:
        return peer
    for k, v in metadata or ():
        if k == ON_BEHALF_HEADER and isinstance(v, str):
            name, _, role = v.partition("/")
            try:
                r = Role(role)
            except ValueError:
                return peer
            if NAME_RE.match(name):
                return Identity(name=name, role=r, via=peer.name)
    return peer


def identity(context: grpc.ServicerContext) -> Identity:
    """Who is calling (set by the interceptor; INSECURE on a plaintext server)."""
    ident = getattr(context, IDENTITY_ATTR, None)
    return ident if isinstance(ident, Identity) else INSECURE


def on_behalf(ident: Identity) -> tuple[tuple[str, str], ...]:
    """Metadata for relaying a call made by `ident` to another replica."""
    if ident is INSECURE or not ident.name:
        return ()
    return ((ON_BEHALF_HEADER, f"{ident.name}/{ident.role.value}"),)


@dataclass(frozen=True)
class Rule:
    """Who may call a method: `roles`; `write` methods are audited; `action` and `target`
    word the denial and the audit record."""

    roles: frozenset[Role]
    action: str
    write: bool = False
    target: Callable[[Any], str] | None = None


ANY_AUTHENTICATED = frozenset(Role)


class AuditLog:
    """`--audit-log FILE`: one JSON line per write RPC, in a 0600 file. Reopened when the file
    was moved or removed (logrotate without copytruncate), so rotation needs no signal."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = -1
        self._ino: tuple[int, int] | None = None
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        st = os.fstat(fd)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)

    def _moved(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._ino

    def record(
        self, ident: Identity, method: str, target: str, request_id: str, result: str
    ) -> None:
        line = {
            "ts": time.time(),
            "identity": ident.name,
            "role": ident.role.value if ident is not INSECURE else "insecure",
            "method": method,
            "target": target,
            "request_id": request_id,
            "result": result,
        }
        if ident.via:
            line["via"] = ident.via
        data = (json.dumps(line) + "\n").encode()
        with self._lock:
            if self._moved():
                self._open()
            os.write(self._fd, data)  # one write per line (O_APPEND): lines never interleave

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _request_id(request: Any) -> str:
    opts = getattr(request, "options", None)
    return str(getattr(opts, "request_id", "") or "")


class AuthInterceptor(grpc.ServerInterceptor):
    """The one place a gRPC server decides who calls and whether they may.

    With `tls`, the peer must present a certificate naming one role (else UNAUTHENTICATED)
    and the method's rule must list that role (else PERMISSION_DENIED); methods absent from
    `rules` (health, reflection) only need a certificate, services in `closed` not even
    that is enough (unknown methods there are denied). Without `tls` everyone is INSECURE.
    Write methods are written to the audit log with their outcome."""

    def __init__(
        self,
        rules: Mapping[str, Rule],
        tls: bool,
        audit: AuditLog | None = None,
        closed_services: tuple[str, ...] = (),
        denied: Callable[[str], None] | None = None,
    ) -> None:
        self.rules = rules
        self.tls = tls
        self.audit = audit
        self.closed = closed_services
        self._denied = denied

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        full = details.method
        service, _, method = full.lstrip("/").partition("/")
        rule = self.rules.get(method)
        if rule is None and any(service == s for s in self.closed):
            rule = Rule(roles=frozenset(), action=f"call {method}")
        metadata = details.invocation_metadata
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                ident = self._admit(rule, method, request, context, metadata)
                try:
                    out = inner(request, context)
                except Exception as e:
                    self._audit(rule, ident, method, request, context, e)
                    raise
                self._audit(rule, ident, method, request, context, None)
                return out

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                ident = self._admit(rule, method, request, context, metadata)
                self._audit(rule, ident, method, request, context, None)
                return inner_stream(request, context)  # type: ignore[no-any-return]

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            inner_bidi = handler.stream_stream

            def bidi(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
                # The target is in the stream: the handler audits what it starts itself.
                self._admit(rule, method, None, context, metadata)
                return inner_bidi(requests, context)  # type: ignore[no-any-return]

            return grpc.stream_stream_rpc_method_handler(
                bidi,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if self.tls:  # no client-streaming methods exist; refuse what cannot be checked
            return None
        return handler

    def _admit(
        self,
        rule: Rule | None,
        method: str,
        request: Any,
        context: grpc.ServicerContext,
        metadata: Any,
    ) -> Identity:
        if not self.tls:
            setattr(context, IDENTITY_ATTR, INSECURE)
            return INSECURE
        peer = _peer(context)
        if peer is None:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "the client certificate names no borgcell identity (issue one with "
                "`borgmaster ca issue`)",
            )
            raise AssertionError("unreachable")  # context.abort raises
        ident = _relayed(peer, metadata)
        setattr(context, IDENTITY_ATTR, ident)
        if rule is not None and ident.role not in rule.roles:
            msg = f"{ident.name} ({ident.role.value}) may not {rule.action}"
            if self._denied is not None:
                self._denied(method)
            self._audit(rule, ident, method, request, context, PermissionError(msg))
            context.abort(grpc.StatusCode.PERMISSION_DENIED, msg)
        return ident

    def _audit(
        self,
        rule: Rule | None,
        ident: Identity,
        method: str,
        request: Any,
        context: grpc.ServicerContext,
        error: BaseException | None,
    ) -> None:
        if self.audit is None or rule is None or not rule.write:
            return
        if error is None:
            code = context.code() if hasattr(context, "code") else None
            result = "ok" if code in (None, grpc.StatusCode.OK) else _code_text(context)
        elif isinstance(error, PermissionError):
            result = f"PERMISSION_DENIED: {error}"
        else:
            result = _code_text(context) or f"error: {type(error).__name__}"
        try:
            target = rule.target(request) if rule.target else ""
        except Exception:
            target = ""
        try:
            self.audit.record(ident, method, target[:256], _request_id(request)[:128], result)
        except OSError as e:  # a full disk must not fail the request it records
            log.error("audit log: %s", e)


def _code_text(context: grpc.ServicerContext) -> str:
    code = context.code() if hasattr(context, "code") else None
    details = context.details() if hasattr(context, "details") else ""
    if code is None:
        return ""
    name = getattr(code, "name", str(code))
    text = details.decode(errors="replace") if isinstance(details, bytes) else details or ""
    return f"{name}: {text}"[:512] if text else name


# ----- the same interceptor on a grpc.aio server ----------------------------------------------

_END = object()


class _Abort(Exception):
    """`CallContext.abort` from a handler: the wrapper ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class CallContext:
    """The context a handler sees on the grpc.aio server: the sync server's `ServicerContext`
    methods the handlers use, for sync handlers (run in a thread) and async ones alike.

    grpc.aio's own contexts take no attributes (the identity lives on the context), have no
    `is_active`, and do not run `add_callback` callbacks when a client cancels a stream served
    by a sync handler (verified with grpcio 1.85): so the wrapper owns the call's lifetime,
    and `abort` raises an exception the wrapper turns into the status (it cannot await)."""

    def __init__(self, context: Any) -> None:
        self._ctx = context
        self._active = True
        self._callbacks: list[Callable[[], Any]] = []
        self._lock = threading.Lock()
        self._code: grpc.StatusCode | None = None
        self._details = ""

    # what handlers call
    def is_active(self) -> bool:
        return self._active

    def add_callback(self, fn: Callable[[], Any]) -> bool:
        with self._lock:
            if self._active:
                self._callbacks.append(fn)
                return True
        return False

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self._code, self._details = code, details
        raise _Abort(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._ctx.set_code(code)

    def set_details(self, details: str) -> None:
        self._details = details
        self._ctx.set_details(details)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def invocation_metadata(self) -> Any:
        return self._ctx.invocation_metadata()

    def auth_context(self) -> Any:
        return self._ctx.auth_context()

    def time_remaining(self) -> float | None:
        return self._ctx.time_remaining()  # type: ignore[no-any-return]

    def peer(self) -> str:
        return str(self._ctx.peer())

    def finish(self) -> None:
        """The call is over (done, failed or cancelled): inactive, callbacks run once."""
        with self._lock:
            self._active = False
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception as e:  # a callback's failure must not fail the others
                log.debug("call callback failed: %s", e)


class _SyncRequests:
    """A sync handler's request iterator over the aio call's async one."""

    def __init__(self, requests: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._requests = requests
        self._loop = loop

    def __iter__(self) -> _SyncRequests:
        return self

    async def _next(self) -> Any:
        try:
            return await anext(self._requests)
        except StopAsyncIteration:
            return _END

    def __next__(self) -> Any:
        item = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()
        if item is _END:
            raise StopIteration
        return item


class AioAuthInterceptor(grpc.aio.ServerInterceptor):
    """`AuthInterceptor` (same table, same identity code, same audit) for a grpc.aio server,
    which also runs the servicer's sync handlers in `pool`: one server where the Borglet link
    is async (a waiting Sync holds no thread) and every other method is the sync code it was.
    Async handlers (`async def`) of the service run on the event loop with a `CallContext`;
    other services' async handlers (health, reflection) get grpc's context unchanged."""

    def __init__(self, auth: AuthInterceptor, pool: Executor) -> None:
        self.auth = auth
        self.pool = pool

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        auth = self.auth
        full = details.method
        service, _, method = full.lstrip("/").partition("/")
        rule = auth.rules.get(method)
        ours = any(service == s for s in auth.closed)
        if rule is None and ours:
            rule = Rule(roles=frozenset(), action=f"call {method}")
        metadata = details.invocation_metadata
        pool = self.pool
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }

        def admit(ctx: CallContext, request: Any) -> Identity:
            return auth._admit(rule, method, request, ctx, metadata)  # type: ignore[arg-type]

        if not ours:
            return self._foreign(handler, kw)
        if handler.unary_unary is not None:
            inner = handler.unary_unary
            is_async = inspect.iscoroutinefunction(inner)

            async def unary(request: Any, context: Any) -> Any:
                ctx = CallContext(context)
                try:
                    ident = admit(ctx, request)
                    try:
                        if is_async:
                            out = await inner(request, ctx)
                        else:
                            loop = asyncio.get_running_loop()
                            out = await loop.run_in_executor(pool, inner, request, ctx)
                    except Exception as e:
                        auth._audit(rule, ident, method, request, ctx, e)  # type: ignore[arg-type]
                        raise
                    auth._audit(rule, ident, method, request, ctx, None)  # type: ignore[arg-type]
                    return out
                except _Abort as a:
                    await context.abort(a.code, a.details)
                finally:
                    ctx.finish()

            return grpc.unary_unary_rpc_method_handler(unary, **kw)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                ctx = CallContext(context)
                loop = asyncio.get_running_loop()
                try:
                    ident = admit(ctx, request)
                    auth._audit(rule, ident, method, request, ctx, None)  # type: ignore[arg-type]
                    it = await loop.run_in_executor(pool, lambda: iter(inner_stream(request, ctx)))
                    while True:
                        item = await loop.run_in_executor(pool, next, it, _END)
                        if item is _END:
                            return
                        yield item
                except _Abort as a:
                    await context.abort(a.code, a.details)
                finally:
                    ctx.finish()  # a follow loop sees is_active() False and ends its thread

            return grpc.unary_stream_rpc_method_handler(stream, **kw)
        if handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
            inner_abidi = handler.stream_stream  # the Borglet Link: on the loop, no thread

            async def abidi(requests: Any, context: Any) -> AsyncIterator[Any]:
                ctx = CallContext(context)
                try:
                    admit(ctx, None)  # the machine is in the stream: the handler checks it
                    async for item in inner_abidi(requests, ctx):
                        yield item
                except _Abort as a:
                    await context.abort(a.code, a.details)
                finally:
                    ctx.finish()

            return grpc.stream_stream_rpc_method_handler(abidi, **kw)
        if handler.stream_stream is not None:
            inner_bidi = handler.stream_stream

            async def bidi(requests: Any, context: Any) -> AsyncIterator[Any]:
                ctx = CallContext(context)
                loop = asyncio.get_running_loop()
                try:
                    admit(ctx, None)  # the target is in the stream: the handler audits
                    reqs = _SyncRequests(requests, loop)
                    it = await loop.run_in_executor(pool, lambda: iter(inner_bidi(reqs, ctx)))
                    while True:
                        item = await loop.run_in_executor(pool, next, it, _END)
                        if item is _END:
                            return
                        yield item
                except _Abort as a:
                    await context.abort(a.code, a.details)
                finally:
                    ctx.finish()

            return grpc.stream_stream_rpc_method_handler(bidi, **kw)
        if auth.tls:  # no client-streaming methods exist; refuse what cannot be checked
            return None
        return handler

    def _foreign(self, handler: Any, kw: dict[str, Any]) -> Any:
        """Other services' async handlers (health, reflection: grpc's aio servicers): only a
        certificate naming a borgcell identity is needed, as on the sync server."""
        tls = self.auth.tls

        async def check(context: Any) -> None:
            if tls and _peer(context) is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "the client certificate names no borgcell identity",
                )

        if handler.unary_unary is not None and inspect.iscoroutinefunction(handler.unary_unary):
            uu = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                await check(context)
                return await uu(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, **kw)
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            us = handler.unary_stream

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                await check(context)
                async for item in us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(stream, **kw)
        if handler.unary_stream is not None and inspect.iscoroutinefunction(handler.unary_stream):
            uw = handler.unary_stream  # writes with context.write (health's Watch)

            async def writer(request: Any, context: Any) -> None:
                await check(context)
                await uw(request, context)

            return grpc.unary_stream_rpc_method_handler(writer, **kw)
        if handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
            ss = handler.stream_stream

            async def bidi(requests: Any, context: Any) -> AsyncIterator[Any]:
                await check(context)
                async for item in ss(requests, context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(bidi, **kw)
        return None  # a sync handler of another service: none is registered on this server
