"""Web UI sessions without a browser certificate: `borgcfg ui` asks a replica (over mTLS) for
a login link; the link's token lives LOGIN_TTL_S and is exchanged at `/login` for a cookie that
lives SESSION_TTL_S. Both are HMAC-signed with a key derived from the cell's Raft secret, so
any replica accepts what another issued; nothing is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from cfg.tls import NAME_RE, Identity, Role

LOGIN_TTL_S = 120
SESSION_TTL_S = 8 * 3600
COOKIE = "borg_session"


def session_key(raft_secret: str) -> bytes:
    return hmac.new(raft_secret.encode(), b"borgcell web ui sessions v1", hashlib.sha256).digest()


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def make_token(key: bytes, ident: Identity, kind: str, now_ms: int, ttl_s: int) -> str:
    body = json.dumps(
        {"n": ident.name, "r": ident.role.value, "k": kind, "e": now_ms + ttl_s * 1000},
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def check_token(key: bytes, token: str, kind: str, now_ms: int) -> Identity | None:
    """The identity a token vouches for, or None (forged, expired, wrong kind, malformed)."""
    if len(token) > 1024 or token.count(".") != 1:
        return None
    body_s, mac_s = token.split(".")
    try:
        body, mac = _unb64(body_s), _unb64(mac_s)
        if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
            return None
        d = json.loads(body)
        if d.get("k") != kind or not isinstance(d.get("e"), int) or d["e"] < now_ms:
            return None
        name, role = d.get("n"), Role(d.get("r"))
    except (ValueError, TypeError):
        return None
    if not isinstance(name, str) or not NAME_RE.match(name):
        return None
    return Identity(name=name, role=role)
