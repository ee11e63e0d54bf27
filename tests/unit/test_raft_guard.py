"""The bounds on what a stranger can make the Raft transport buffer (borgmaster/raft_guard.py).
End to end (a task flooding the Raft port): tests/integration/test_hostile_master.py."""

from __future__ import annotations

import struct

from borgmaster.raft_guard import MAX_FRAME, PRE_AUTH_MAX_FRAME, frame_too_large

# ----- Raft frame bounds ---------------------------------------------------------------------


def frame(n: int, body: bytes = b"") -> bytes:
    return struct.pack("i", n) + body


def test_frames_over_the_pre_authentication_bound_are_too_large() -> None:
    assert not frame_too_large(frame(200, b"x" * 200), authenticated=False)
    assert frame_too_large(frame(PRE_AUTH_MAX_FRAME + 1), authenticated=False)
    assert not frame_too_large(frame(PRE_AUTH_MAX_FRAME + 1), authenticated=True)
    assert frame_too_large(frame(MAX_FRAME + 1), authenticated=True)
    assert frame_too_large(frame(-5), authenticated=True)
    assert not frame_too_large(b"\x01\x02", authenticated=False)  # no length yet


def test_a_buffer_past_the_bound_is_too_large_whatever_its_first_frame() -> None:
    buf = frame(100, b"y" * 100) + b"z" * (PRE_AUTH_MAX_FRAME + (64 << 10) + 16)
    assert frame_too_large(buf, authenticated=False)
