"""gRPC's side of the cell's identities: channels that present a certificate and verify the
server's role, and the one server interceptor that turns the peer certificate into an
`Identity` and applies an authorization table (SPEC part 2, "Authorization").

Handlers never read who is calling from a request field: they call `identity(context)`,
which reads the TLS peer (or the relaying master's statement, for a master only).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

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
