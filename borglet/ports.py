"""Port allocation for tasks' ``requirements.ports`` from the Borglet's ``--port-range``.

The choice is pure (a cursor that walks the range, skipping ports held by live tasks and ports
the caller's ``is_free`` rejects), so it is tested without sockets; the agent passes the
default probe, which tries to bind the port: a port some other program on the host holds is
never handed to a task (it would crash-loop on EADDRINUSE), and a restarting task whose old
port was taken meanwhile gets a new one instead of keeping it. Walking the range instead of
always taking the lowest free port keeps a just-released port from being handed out again at
once (a client of the old task may still be talking to it).
"""

from __future__ import annotations

import errno
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


def _bind_probe(family: socket.AddressFamily, host: str, port: int) -> bool:
    """Try to bind `port` on the wildcard address of one family; False when it is taken.

    SO_REUSEADDR as servers set it: a port left only in TIME_WAIT by a task's earlier run
    counts as free (the task can bind it again), while a listener on any address of the
    family (the wildcard, 127.0.0.1, ::1) still makes the bind fail with EADDRINUSE."""
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return True  # no such family on this host: nothing can hold the port there
    with s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # The v6 side only: the v4 side has its own probe, whatever bindv6only says.
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            # EADDRNOTAVAIL: IPv6 disabled on this host; treat like no such family.
            return e.errno == errno.EADDRNOTAVAIL
    return True


def bindable(port: int) -> bool:
    """Whether nothing on this host listens on (or holds) the TCP port, over IPv4 and IPv6.

    We do not know which family (or address) a task binds, so both wildcards are probed: a
    task that binds 127.0.0.1, 0.0.0.0, ::1 or :: then never gets a port already held there."""
    return _bind_probe(socket.AF_INET, "0.0.0.0", port) and _bind_probe(socket.AF_INET6, "::", port)


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

    def assign(
        self,
        names: list[str],
        priors: list[dict[str, int]],
        in_use: set[int],
        is_free: Callable[[int], bool] = bindable,
    ) -> dict[str, int]:
        """The ports of a task about to (re)start, one per name.

        A name keeps the first port `priors` give it (the master's record, then the task's
        own last ones: a restarted task keeps its ports) while no other live task holds it
        and it is still free on the host; otherwise it gets a new one from the range. The
        caller reports the result to the master, so a changed port is known cell-wide."""
        out: dict[str, int] = {}
        for name in names:
            for prior in priors:
                p = prior.get(name)
                if p is None or p in in_use or p in out.values():
                    continue
                if is_free(p):
                    out[name] = p
                    break
        missing = [n for n in names if n not in out]
        if missing:
            out.update(self.allocate(missing, in_use | set(out.values()), is_free))
        return {n: out[n] for n in names}
