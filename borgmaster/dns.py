"""The DNS server of a replica: the cell's BNS zone (naming.py) over UDP and TCP.

Wire format by dnslib (a maintained codec, not hand-packed bytes). Hostile input is expected:
a packet that does not parse, or that is a response, is dropped (UDP) or ends the connection
(TCP) without a log line per packet; questions get FORMERR/NOTIMP/REFUSED per RFC 1035 and
RFC 8482 (ANY). UDP answers larger than the client's payload size (512, or its EDNS0 size up
to 1232) are truncated with TC set so the client retries over TCP. TCP connections are capped
in number and time. The servers run on their own threads, never the gRPC or Raft threads, and
a query is answered from the store by key (see naming.py), so a flood costs GIL time but never
blocks a write.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from dnslib import (
    AAAA,
    CNAME,
    EDNS0,
    OPCODE,
    QTYPE,
    RCODE,
    RD,
    RR,
    SOA,
    SRV,
    A,
    DNSHeader,
    DNSQuestion,
    DNSRecord,
)

from borgmaster.naming import Answer, Rcode, Record, Zone

log = logging.getLogger("borgmaster.dns")

UDP_DEFAULT_PAYLOAD = 512
UDP_MAX_PAYLOAD = 1232
"""The largest UDP answer sent whatever EDNS0 asks (DNS flag day 2020: no fragmentation)."""
MAX_TCP_CLIENTS = 64
TCP_IDLE_S = 10.0
MAX_QUESTION = 512
"""A query longer than this is not a question this zone answers (names are <= 255 bytes)."""
PER_SOURCE_QPS = 1000.0
"""UDP queries per second answered for one source address (burst: one second's worth); the
rest are dropped unread. A machine's stub resolver caches for the 5 s TTL, so this is far
above what a machine's tasks ask; it keeps one flooding source (a task, a reflection attack)
from taking the replica's CPU from its API and Raft (response rate limiting, as BIND's RRL)."""
MAX_SOURCES = 4096
"""Rate buckets kept (the least recently used go first)."""
MAX_PACKETS_PER_S = 20_000
"""UDP packets read per second, all sources together. Past it the server stops reading for
the rest of a 10 ms slice and the kernel drops what overflows the socket's queue: even
dropping costs Python time per packet, and a flood must not take the GIL from gRPC and Raft."""
SLICE_S = 0.01


class SourceLimiter:
    """A token bucket per source address; `allow(ip, now)` spends one token if there is one."""

    def __init__(self, rate: float = PER_SOURCE_QPS, max_sources: int = MAX_SOURCES) -> None:
        self.rate = rate
        self.max_sources = max_sources
        self.buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, last refill)
        self.limited = 0

    def allow(self, ip: str, now: float) -> bool:
        tokens, last = self.buckets.pop(ip, (self.rate, now))
        tokens = min(self.rate, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        else:
            self.limited += 1
        self.buckets[ip] = (tokens, now)  # re-inserted: dict order is recency
        if len(self.buckets) > self.max_sources:
            del self.buckets[next(iter(self.buckets))]
        return ok


def _rdata(r: Record) -> object:
    v: Any = r.value
    if r.rtype == "A":
        return A(str(v))
    if r.rtype == "AAAA":
        return AAAA(str(v))
    if r.rtype == "CNAME":
        return CNAME(str(v))
    if r.rtype == "SRV":
        prio, weight, port, target = v
        return SRV(priority=prio, weight=weight, port=port, target=target)
    if r.rtype == "SOA":
        mname, rname, serial = v
        return SOA(mname, rname, (serial, 3600, 600, 86400, 5))
    if r.rtype == "HINFO":
        # dnslib has no HINFO class: two <character-string>s (RFC 1035 3.3.2) as raw rdata.
        cpu, os_ = (x.encode()[:255] for x in v)
        return RD(bytes([len(cpu)]) + cpu + bytes([len(os_)]) + os_)
    raise ValueError(f"unknown record type {r.rtype}")


def _rr(r: Record) -> RR:
    return RR(r.name, getattr(QTYPE, r.rtype), rdata=_rdata(r), ttl=r.ttl)


def fit(records: list[Record], extra: list[Record], budget: int) -> tuple[list[Record], bool]:
    """A random subset of `records` (with the additional records naming their targets) whose
    wire size stays under `budget` bytes, and whether any record was left out (sizes as
    `_size` counts them; `pack_within` still truncates a reply that came out larger).
    Building and packing only what can be sent keeps a UDP answer for a 10,000-task job as
    cheap as one for a single task. The subset is shuffled so clients spread over tasks."""
    if not records:
        return [], False
    order = list(records)
    random.shuffle(order)
    by_name: dict[str, list[Record]] = {}
    for r in extra:
        by_name.setdefault(r.name, []).append(r)
    chosen: list[Record] = []
    used = 0
    for r in order:
        cost = _size(r) + sum(_size(g) for g in by_name.get(_target(r), ()))
        if used + cost > budget:
            return chosen, True
        chosen.append(r)
        used += cost
    return chosen, False


def _target(r: Record) -> str:
    return str(r.value[3]) if r.rtype == "SRV" else ""  # type: ignore[index]


def _size(r: Record) -> int:
    """A record's wire size: its owner name is the question's or an SRV target written
    before it, so a 2-byte pointer; then type/class/ttl/length (10) and the rdata, an SRV
    target counted whole (RFC 2782 forbids compressing it)."""
    if r.rtype == "A":
        return 2 + 10 + 4
    if r.rtype == "AAAA":
        return 2 + 10 + 16
    if r.rtype == "SRV":
        return 2 + 10 + 6 + len(_target(r)) + 2
    return 2 + 10 + len(str(r.value)) + 2


def respond(zone: Zone, data: bytes, tcp: bool = False) -> tuple[DNSRecord | None, int]:
    """The reply to one query packet (None: drop it) and the UDP payload size it allows.
    Over UDP only what fits is built (TC set when records were left out: the client asks
    again over TCP for all of them)."""
    if len(data) < 12 or len(data) > MAX_QUESTION:
        return None, UDP_DEFAULT_PAYLOAD
    try:
        query = DNSRecord.parse(data)
    except Exception:  # dnslib raises several types on garbage; none is worth a log line
        return None, UDP_DEFAULT_PAYLOAD
    if query.header.qr:  # a response sent to us: never answer (no reflection loops)
        return None, UDP_DEFAULT_PAYLOAD
    payload = UDP_DEFAULT_PAYLOAD
    for rr in query.ar:
        if rr.rtype == QTYPE.OPT:
            payload = max(UDP_DEFAULT_PAYLOAD, min(int(rr.rclass), UDP_MAX_PAYLOAD))
    reply = DNSRecord(
        DNSHeader(id=query.header.id, qr=1, opcode=query.header.opcode, rd=query.header.rd)
    )
    if len(query.questions) == 1:
        q = query.q
        reply.add_question(DNSQuestion(str(q.qname), q.qtype, q.qclass))
    if payload > UDP_DEFAULT_PAYLOAD:
        reply.add_ar(EDNS0(udp_len=UDP_MAX_PAYLOAD))
    if query.header.opcode != OPCODE.QUERY:
        reply.header.rcode = RCODE.NOTIMP
        return reply, payload
    if len(query.questions) != 1:
        reply.header.rcode = RCODE.FORMERR
        return reply, payload
    q = query.q
    if q.qclass not in (1, 255):  # IN, or * (ANY): no other class lives here
        reply.header.rcode = RCODE.REFUSED
        return reply, payload
    qtype = QTYPE.get(q.qtype, "")
    ans: Answer = zone.answer(str(q.qname), str(qtype))
    reply.header.rcode = ans.rcode.value
    reply.header.aa = int(ans.authoritative)
    answers, extra = ans.answers, ans.additional
    if not tcp:
        # header 12, the question, an OPT record 11 (a negative answer has no records to fit)
        budget = payload - 12 - (len(str(q.qname)) + 6) - 11
        answers, truncated = fit(answers, extra, budget)
        if truncated:
            reply.header.tc = 1
            targets = {_target(r) for r in answers}
            extra = [r for r in extra if r.name in targets]
    for r in answers:
        reply.add_answer(_rr(r))
    for r in extra:
        reply.add_ar(_rr(r))
    if ans.soa is not None and ans.rcode in (Rcode.NOERROR, Rcode.NXDOMAIN):
        reply.add_auth(_rr(ans.soa))
    return reply, payload


def pack_within(reply: DNSRecord, limit: int) -> bytes:
    """The reply's wire bytes, or a truncated (TC) reply with the question only if larger."""
    data = bytes(reply.pack())  # dnslib packs into a bytearray
    if len(data) <= limit:
        return data
    short = DNSRecord(DNSHeader(id=reply.header.id, qr=1, aa=reply.header.aa, tc=1), q=reply.q)
    short.header.rcode = reply.header.rcode
    return bytes(short.pack())


class DnsServer:
    """UDP and TCP on one HOST:PORT, each on its own daemon thread."""

    def __init__(
        self, addr: str, zone_of: Callable[[], Zone], per_source_qps: float = PER_SOURCE_QPS
    ) -> None:
        host, _, port = addr.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.zone_of = zone_of
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self.tcp = socket.socket(family, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.udp.bind((self.host, self.port))
            self.tcp.bind((self.host, self.port))
        except OSError as e:
            self.udp.close()
            self.tcp.close()
            if e.errno == errno.EADDRINUSE:
                raise OSError(f"dns address {addr} is in use") from None
            raise OSError(f"dns address {addr}: cannot bind ({e.strerror or e})") from None
        self.tcp.listen(64)
        self._stop = threading.Event()
        self._clients = threading.BoundedSemaphore(MAX_TCP_CLIENTS)
        self.limiter = SourceLimiter(per_source_qps)
        self.queries = 0
        self.dropped = 0

    def start(self) -> None:
        for fn, name in ((self._serve_udp, "dns-udp"), (self._serve_tcp, "dns-tcp")):
            threading.Thread(target=fn, name=name, daemon=True).start()
        log.info("dns: serving %s on %s:%d (udp, tcp)", self.zone_of().origin, self.host, self.port)

    def stop(self) -> None:
        self._stop.set()
        for s in (self.udp, self.tcp):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _answer(self, data: bytes, tcp: bool = False) -> tuple[DNSRecord | None, int]:
        try:
            reply, payload = respond(self.zone_of(), data, tcp)
        except Exception:  # never let one packet end the server
            log.exception("dns: failed to answer a query")
            return None, UDP_DEFAULT_PAYLOAD
        if reply is None:
            self.dropped += 1
        else:
            self.queries += 1
        return reply, payload

    def _serve_udp(self) -> None:
        budget = MAX_PACKETS_PER_S * SLICE_S
        slice_end, used = 0.0, 0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= slice_end:
                slice_end, used = now + SLICE_S, 0
            elif used >= budget:
                time.sleep(slice_end - now)
                continue
            used += 1
            try:
                data, peer = self.udp.recvfrom(4096)
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.01)
                continue
            if not peer:  # a socket shut down by stop() reads (b"", None)
                if self._stop.is_set():
                    return
                continue
            if not self.limiter.allow(peer[0], now):
                continue
            reply, payload = self._answer(data)
            if reply is None:
                continue
            try:
                self.udp.sendto(pack_within(reply, payload), peer)
            except Exception:  # a reply that cannot be packed or sent: drop it, keep serving
                continue

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.01)
                continue
            if not self._clients.acquire(blocking=False):
                conn.close()  # too many open: the client retries later
                continue
            threading.Thread(target=self._tcp_client, args=(conn,), daemon=True).start()

    def _tcp_client(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(TCP_IDLE_S)
            while not self._stop.is_set():
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                (n,) = struct.unpack("!H", head)
                data = _recv_exact(conn, n)
                if data is None:
                    return
                reply, _ = self._answer(data, tcp=True)
                if reply is None:
                    return
                out = pack_within(reply, 65535)
                conn.sendall(struct.pack("!H", len(out)) + out)
        except OSError:
            return
        finally:
            conn.close()
            self._clients.release()


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
