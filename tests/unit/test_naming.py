"""BNS answers (borgmaster/naming.py) and their wire form (borgmaster/dns.py), from a store
fed real commands; replies are parsed with dnspython, a real resolver library. The served
end to end (UDP, TCP, a real cell) is tests/integration/test_naming.py."""

from __future__ import annotations

import struct
from typing import Any

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from borgmaster import commands as C
from borgmaster.dns import UDP_DEFAULT_PAYLOAD, SourceLimiter, pack_within, respond
from borgmaster.model import HealthCheck, HealthKind, Machine, Requirements, Resources
from borgmaster.naming import Rcode, Zone, task_name
from tests.unit.test_store import Cell, GiB, spec

ORIGIN = "cell1.borg."


def register(cell: Cell, name: str, address: str) -> None:
    m = Machine(name=name, address=address, capacity=Resources(cpu=8, ram=32 * GiB, disk=GiB))
    cell.apply(C.RegisterMachine(ts_ms=1, machine=m))


@pytest.fixture
def cell() -> Cell:
    c = Cell()
    register(c, "m1", "10.0.0.1:7071")
    register(c, "m2", "[fd00::2]:7071")
    register(c, "m3", "node-3.example.com:7071")
    reqs = Requirements(cpu=0.1, ram=GiB, ports=["http", "admin"])
    c.submit(spec("web", replicas=4, user="alice", requirements=reqs))
    for i, m in enumerate(["m1", "m2", "m3", "m1"]):
        c.place("web", i, m)
    for i in range(3):
        c.update("web", i, "running", ports={"http": 20000 + i, "admin": 21000 + i})
    # web/3 stays assigned (not running): it is in no answer
    return c


def zone(cell: Cell) -> Zone:
    return Zone("cell1", cell.store)


def values(ans: Any, rtype: str) -> list[Any]:
    return sorted(r.value for r in ans.answers if r.rtype == rtype)


def test_a_task_name_answers_its_machines_address() -> None:
    c = Cell()
    register(c, "m1", "10.0.0.1:7071")
    c.submit(spec("web", replicas=1, user="alice"))
    c.place("web", 0, "m1")
    c.update("web", 0, "running")
    z = zone(c)
    assert values(z.answer(f"0.web.alice.{ORIGIN}", "A"), "A") == ["10.0.0.1"]
    assert values(z.answer(f"0.WEB.Alice.{ORIGIN}".upper(), "A"), "A") == ["10.0.0.1"]
    assert task_name(0, "web", "Alice", "Cell1") == f"0.web.alice.{ORIGIN}"


def test_ipv6_machines_answer_aaaa_and_host_names_a_cname(cell: Cell) -> None:
    z = zone(cell)
    assert values(z.answer(f"1.web.alice.{ORIGIN}", "AAAA"), "AAAA") == ["fd00::2"]
    ans = z.answer(f"1.web.alice.{ORIGIN}", "A")
    assert ans.rcode == Rcode.NOERROR and ans.answers == [] and ans.soa is not None  # NODATA
    cname = z.answer(f"2.web.alice.{ORIGIN}", "A")
    assert [(r.rtype, r.value) for r in cname.answers] == [("CNAME", "node-3.example.com.")]


def test_the_job_name_lists_every_serving_tasks_address_once(cell: Cell) -> None:
    z = zone(cell)
    assert values(z.answer(f"web.alice.{ORIGIN}", "A"), "A") == ["10.0.0.1"]
    assert values(z.answer(f"web.alice.{ORIGIN}", "AAAA"), "AAAA") == ["fd00::2"]
    cell.update("web", 1, "failed", exit_code=1)
    assert z.answer(f"web.alice.{ORIGIN}", "AAAA").answers == []


def test_srv_names_one_record_per_serving_task_with_that_port(cell: Cell) -> None:
    ans = zone(cell).answer(f"_http._tcp.web.alice.{ORIGIN}", "SRV")
    assert values(ans, "SRV") == [
        (0, 0, 20000, f"0.web.alice.{ORIGIN}"),
        (0, 0, 20001, f"1.web.alice.{ORIGIN}"),
        (0, 0, 20002, f"2.web.alice.{ORIGIN}"),
    ]
    glue = {(r.name, r.rtype, r.value) for r in ans.additional}
    assert (f"0.web.alice.{ORIGIN}", "A", "10.0.0.1") in glue
    assert (f"1.web.alice.{ORIGIN}", "AAAA", "fd00::2") in glue
    assert values(zone(cell).answer(f"_admin._tcp.web.alice.{ORIGIN}", "SRV"), "SRV")[0][2] == (
        21000
    )


def test_unhealthy_tasks_leave_the_zone_when_the_job_has_a_check() -> None:
    c = Cell()
    register(c, "m1", "10.0.0.1:7071")
    c.submit(spec("api", replicas=2, user="bob", health=HealthCheck(HealthKind.TCP, "http")))
    c.place("api", 0, "m1")
    c.place("api", 1, "m1")
    c.update("api", 0, "running", health="healthy")
    c.update("api", 1, "running", health="unhealthy")
    z = zone(c)
    assert values(z.answer(f"0.api.bob.{ORIGIN}", "A"), "A") == ["10.0.0.1"]
    assert z.answer(f"1.api.bob.{ORIGIN}", "A").answers == []
    eps = {e.index: e.healthy for e in z.endpoints("api")}
    assert eps == {0: True, 1: False}


@pytest.mark.parametrize(
    ("name", "rcode"),
    [
        (f"9.web.alice.{ORIGIN}", Rcode.NXDOMAIN),  # index past the replicas
        (f"web.bob.{ORIGIN}", Rcode.NXDOMAIN),  # someone else's job name
        (f"nosuch.alice.{ORIGIN}", Rcode.NXDOMAIN),
        (f"x.0.web.alice.{ORIGIN}", Rcode.NXDOMAIN),
        (f"_nosuch._tcp.web.alice.{ORIGIN}", Rcode.NXDOMAIN),
        (f"alice.{ORIGIN}", Rcode.NOERROR),  # an empty non-terminal
        (f"_tcp.web.alice.{ORIGIN}", Rcode.NOERROR),
        (ORIGIN, Rcode.NOERROR),
        ("web.alice.othercell.borg.", Rcode.REFUSED),
        ("example.com.", Rcode.REFUSED),
    ],
)
def test_names_that_do_not_exist_or_are_elsewhere(cell: Cell, name: str, rcode: Rcode) -> None:
    assert zone(cell).answer(name, "A").rcode == rcode


def test_a_killed_jobs_names_are_gone(cell: Cell) -> None:
    cell.apply(C.KillJob(name="web", user="alice"))
    assert zone(cell).answer(f"0.web.alice.{ORIGIN}", "A").rcode == Rcode.NXDOMAIN


# ----- the wire ------------------------------------------------------------------------------


def ask(cell: Cell, name: str, rtype: str, **kw: Any) -> dns.message.Message:
    q = dns.message.make_query(name, rtype, **kw)
    reply, payload = respond(zone(cell), q.to_wire())
    assert reply is not None
    return dns.message.from_wire(pack_within(reply, payload))


def test_replies_parse_with_a_real_resolver_library(cell: Cell) -> None:
    r = ask(cell, f"_http._tcp.web.alice.{ORIGIN}", "SRV")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    srv = sorted((rr.port, str(rr.target)) for rr in r.answer[0])
    assert srv[0] == (20000, f"0.web.alice.{ORIGIN}")
    assert r.answer[0].ttl == 5
    nx = ask(cell, f"nosuch.alice.{ORIGIN}", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert nx.authority and nx.authority[0].rdtype == dns.rdatatype.SOA
    assert ask(cell, "example.com.", "A").rcode() == dns.rcode.REFUSED


def test_any_queries_get_the_rfc8482_minimal_answer(cell: Cell) -> None:
    r = ask(cell, f"0.web.alice.{ORIGIN}", "ANY")
    assert r.rcode() == dns.rcode.NOERROR
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.HINFO]


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x00" * 5,
        b"\xff" * 12,
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc",  # label runs off the end
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xc0\x0c" + b"\x00\x01\x00\x01",
        bytes(range(256)) * 3,  # too long to be a question
    ],
)
def test_malformed_packets_are_dropped_never_raised(cell: Cell, packet: bytes) -> None:
    reply, _ = respond(zone(cell), packet)
    assert reply is None


def test_a_response_sent_to_the_server_is_not_answered(cell: Cell) -> None:
    q = dns.message.make_query(f"0.web.alice.{ORIGIN}", "A")
    q.flags |= dns.flags.QR
    assert respond(zone(cell), q.to_wire())[0] is None


def test_two_questions_are_formerr_and_other_opcodes_notimp(cell: Cell) -> None:
    q = dns.message.make_query(f"0.web.alice.{ORIGIN}", "A")
    wire = bytearray(q.to_wire())
    question = wire[12:]
    wire[4:6] = struct.pack("!H", 2)
    reply, _ = respond(zone(cell), bytes(wire) + question)
    assert reply is not None and reply.header.rcode == dns.rcode.FORMERR
    q = dns.message.make_query(f"0.web.alice.{ORIGIN}", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    reply, _ = respond(zone(cell), q.to_wire())
    assert reply is not None and reply.header.rcode == dns.rcode.NOTIMP


def test_big_answers_are_truncated_for_udp_and_whole_over_tcp() -> None:
    c = Cell()
    for i in range(60):
        register(c, f"m{i}", f"10.0.{i // 250}.{i % 250 + 1}:7071")
    c.submit(spec("big", replicas=60, user="alice", requirements=Requirements(ports=["http"])))
    for i in range(60):
        c.place("big", i, f"m{i}")
        c.update("big", i, "running", ports={"http": 30000 + i})
    q = dns.message.make_query(f"_http._tcp.big.alice.{ORIGIN}", "SRV")
    reply, payload = respond(zone(c), q.to_wire())
    assert reply is not None and payload == UDP_DEFAULT_PAYLOAD
    wire = pack_within(reply, payload)
    assert len(wire) <= UDP_DEFAULT_PAYLOAD
    udp = dns.message.from_wire(wire)
    assert udp.flags & dns.flags.TC  # some left out: the client asks again over TCP
    part = {str(rd.target) for rd in udp.answer[0]}
    assert 1 <= len(part) < 60
    glue = {str(rrset.name) for rrset in udp.additional}
    assert glue == part  # each target's address, and only those
    reply, _ = respond(zone(c), q.to_wire(), tcp=True)
    assert reply is not None
    tcp = dns.message.from_wire(pack_within(reply, 65535))
    assert len(tcp.answer[0]) == 60 and not tcp.flags & dns.flags.TC


def test_a_bigger_edns_payload_carries_more_records() -> None:
    c = Cell()
    for i in range(60):
        register(c, f"m{i}", f"10.0.0.{i + 1}:7071")
    c.submit(spec("big", replicas=60, user="alice"))
    for i in range(60):
        c.place("big", i, f"m{i}")
        c.update("big", i, "running")
    plain = dns.message.make_query(f"big.alice.{ORIGIN}", "A")
    edns = dns.message.make_query(f"big.alice.{ORIGIN}", "A", use_edns=0, payload=1232)
    small = dns.message.from_wire(pack_within(*respond(zone(c), plain.to_wire())))  # type: ignore[arg-type]
    big_reply, big_payload = respond(zone(c), edns.to_wire())
    assert big_reply is not None and big_payload == 1232
    big = dns.message.from_wire(pack_within(big_reply, big_payload))
    assert len(small.answer[0]) < len(big.answer[0]) <= 60


def test_one_source_is_rate_limited_and_others_are_not() -> None:
    lim = SourceLimiter(rate=100)
    sent = [lim.allow("10.0.0.9", 0.0) for _ in range(150)]
    assert sent.count(True) == 100 and lim.limited == 50
    assert lim.allow("10.0.0.8", 0.0)  # another source has its own bucket
    assert not lim.allow("10.0.0.9", 0.001)
    assert sum(lim.allow("10.0.0.9", 0.5) for _ in range(60)) == 50  # refilled at 100/s
    small = SourceLimiter(rate=10, max_sources=3)
    for ip in ("a", "b", "c", "d"):
        small.allow(ip, 0.0)
    assert list(small.buckets) == ["b", "c", "d"]


def test_the_server_stops_cleanly(cell: Cell) -> None:
    """stop() shuts the sockets down under the serving threads: they end, without a
    traceback (a shut-down UDP socket reads an empty datagram from no one)."""
    import threading

    from borgmaster.dns import DnsServer
    from tests.cluster import free_port, wait_for

    errors: list[BaseException] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)  # type: ignore[assignment,return-value]
    try:
        server = DnsServer(f"127.0.0.1:{free_port()}", lambda: zone(cell))
        server.start()
        names = {"dns-udp", "dns-tcp"}
        wait_for(lambda: names <= {t.name for t in threading.enumerate()}, 5)
        server.stop()
        wait_for(lambda: not names & {t.name for t in threading.enumerate()}, 5, what="stopped")
    finally:
        threading.excepthook = old_hook
    assert errors == []
