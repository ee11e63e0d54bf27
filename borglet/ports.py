"""Port allocation for tasks' ``requirements.ports`` from the Borglet's ``--port-range``.

The choice is pure (a cursor that walks the range, skipping ports held by live tasks and ports
the caller's ``is_free`` rejects), so it is tested without sockets; the agent passes a probe
that tries to bind the port. Walking the range instead of always taking the lowest free port
keeps a just-released port from being handed out again at once (a client of the old task may
still be talking to it).
"""

from __future__ import annotations

import socket
from collections.abc import Callable


def parse_range(text: str) -> tuple[int, int]:
    """'20000-32000' -> (20000, 32000); ValueError with one clear line otherwise."""
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        raise ValueError(f"port range {text!r} is not LOW-HIGH") from None
    if not sep or not 1 <= lo <= hi <= 65535:
        raise ValueError(f"port range {text!r} is not LOW-HIGH within 1-65535")
    return lo, hi


def bindable(port: int) -> bool:
    """Whether nothing on this host listens on (or holds) the TCP port."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class PortAllocator:
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self._next = lo

    def allocate(
        self, names: list[str], in_use: set[int], is_free: Callable[[int], bool] = bindable
    ) -> dict[str, int]:
        """One distinct port per name; ValueError when the range has too few free ports."""
        out: dict[str, int] = {}
        taken = set(in_use)
        size = self.hi - self.lo + 1
        for name in names:
            for _ in range(size):
                port = self._next
                self._next = self.lo if port >= self.hi else port + 1
                if port not in taken and is_free(port):
                    out[name] = port
                    taken.add(port)
                    break
            else:
                raise ValueError(f"no free port left in {self.lo}-{self.hi}")
        return out
