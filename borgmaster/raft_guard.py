"""Bounds on what a stranger can make PySyncObj's Raft transport hold in memory.

PySyncObj (0.3.x) reads a 4-byte length prefix and then appends every byte the peer sends to
one buffer until that many have arrived: anyone who can reach the Raft port could announce a
2 GiB frame and make the Raft thread (which also applies the log and sends heartbeats) grow a
buffer of that size, one connection at a time. Frames are authenticated (Fernet) only once
they are complete, so the bound has to come before authentication.

`install()` wraps the connection's read step (a name-mangled private method of the pinned
version, checked at install time): a frame longer than `PRE_AUTH_MAX_FRAME` on a connection
that has not yet delivered one authenticated frame, or longer than `MAX_FRAME` on any
connection, disconnects the peer before its buffer can grow past one receive chunk beyond
the bound. PySyncObj's own code still does the authenticating; this only caps its buffer.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from pysyncobj import tcp_connection

log = logging.getLogger("borgmaster.raft")

PRE_AUTH_MAX_FRAME = 64 << 10
"""Largest frame from a peer that has not authenticated yet: its first frame is a 32-byte
random key, pickled, compressed and encrypted (a few hundred bytes)."""
MAX_FRAME = 256 << 20
"""Largest frame at all: an append-entries batch (at most 64 MiB of entries, see
fsm.RaftTuning) pickled, compressed and Fernet-encoded (base64: x4/3), with room to spare."""

_READ = "_TcpConnection__processRead"
_BUFFER = "_TcpConnection__readBuffer"
_installed = False


def frame_too_large(buffer: bytes, authenticated: bool) -> bool:
    """Whether the frame at the head of `buffer` (or the buffer itself) exceeds its bound."""
    limit = MAX_FRAME if authenticated else PRE_AUTH_MAX_FRAME
    if len(buffer) >= 4:
        (announced,) = struct.unpack("i", buffer[:4])
        if announced < 0 or announced > limit:
            return True
    # A whole frame plus the next one's prefix can be buffered; more means a frame too long.
    return len(buffer) > limit + 8 + (64 << 10)


def install() -> None:
    """Wrap PySyncObj's connection read step once per process (idempotent)."""
    global _installed
    if _installed:
        return
    cls = tcp_connection.TcpConnection
    original: Callable[[Any], bool] | None = getattr(cls, _READ, None)
    if original is None:  # a PySyncObj other than the pinned one: refuse to run unguarded
        raise ImportError("pysyncobj: TcpConnection has no read step to guard (version?)")

    def guarded_read(self: Any) -> bool:
        more = original(self)
        buffer = getattr(self, _BUFFER, b"")
        # recvLastTimestamp is set by PySyncObj only after a frame decrypted with the secret.
        authenticated = bool(getattr(self, "recvLastTimestamp", 0))
        if buffer and frame_too_large(buffer, authenticated):
            log.warning(
                "raft: dropping a connection that sent a frame over %d bytes (%s)",
                MAX_FRAME if authenticated else PRE_AUTH_MAX_FRAME,
                "authenticated" if authenticated else "before authenticating",
            )
            setattr(self, _BUFFER, b"")
            self.disconnect()
            return False
        return more

    setattr(cls, _READ, guarded_read)
    _installed = True
