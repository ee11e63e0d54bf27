"""Who is calling from this machine: the unix account behind a local TCP peer.

The Borglet's gRPC port serves task logs, and every task on the machine can reach it. Until
callers authenticate with certificates (the identity work of SPEC part 2), the Borglet can at
least recognise tasks on its own machine: the kernel's socket tables (/proc/net/tcp, tcp6)
list every local TCP socket with its owner's uid, so a connection whose other end is a socket
of this machine owned by one of the accounts tasks run as is refused. A caller on another
machine is not in the tables and is let through, and so is a local caller of another account
(an operator's borgcfg, a master beside the Borglet).
"""

from __future__ import annotations

import ipaddress

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def parse_peer(peer: str) -> tuple[str, int] | None:
    """('127.0.0.1', 5555) from gRPC's 'ipv4:127.0.0.1:5555' / 'ipv6:[::1]:5555'; None for
    other transports (unix sockets)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    try:
        return str(ipaddress.ip_address(host.strip("[]"))), int(port)
    except ValueError:
        return None


def _decode(hex_addr: str) -> tuple[str, int]:
    """An address of /proc/net/tcp*: the IP as the kernel's 32-bit words (host byte order on
    little-endian machines), the port big-endian hex."""
    ip_hex, _, port_hex = hex_addr.partition(":")
    raw = bytes.fromhex(ip_hex)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port_hex, 16)


def local_owner(peer: str, tables: tuple[str, ...] = TABLES) -> int | None:
    """The uid owning the local socket at the peer's address, or None when the peer is not a
    socket of this machine (or the tables cannot be read)."""
    want = parse_peer(peer)
    if want is None:
        return None
    for path in tables:
        try:
            with open(path) as f:
                next(f, None)  # header
                for line in f:
                    fields = line.split()
                    if len(fields) < 8:
                        continue
                    try:
                        if _decode(fields[1]) == want:
                            return int(fields[7])
                    except ValueError:
                        continue
        except OSError:
            continue
    return None


def task_account_caller(peer: str, task_uids: frozenset[int]) -> int | None:
    """The uid of a caller on this machine whose socket belongs to one of the accounts tasks
    run as, or None when the caller may go on (remote, or another local account: a user's
    shell running borgcfg, a master beside the Borglet)."""
    uid = local_owner(peer)
    return uid if uid is not None and uid in task_uids else None
