"""BNS end to end: three real masters serving DNS (`--dns`) from their own stores, a real
Borglet running tasks, queried with dnspython over UDP and TCP as any client would.

Covers: A and SRV names on every replica (followers answer from their own state), TTL 5,
NXDOMAIN/REFUSED, BORG_NAME in the task's environment, `borgcfg endpoints`, an unhealthy task
leaving DNS within a health interval plus a sync (and coming back), and hostile packets
(garbage, huge names, a flood) that never crash a replica or slow its gRPC API.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.cluster import Cell, add_master_with_args, free_port, wait_for
from tests.conftest import cgroups_usable

pytestmark = [pytest.mark.e2e]

USER = "tester"  # Cell.borgcfg submits as this user
ZONE = "borgcell.borg."


@pytest.fixture(scope="module")
def cell() -> Iterator[Cell]:
    why = cgroups_usable()
    if why:
        pytest.skip(why)
    c = Cell()
    try:
        rafts = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        for i in range(3):
            dns_port = free_port()
            peers = [r for j, r in enumerate(rafts) if j != i]
            m = add_master_with_args(c, i, rafts[i], peers, ["--dns", f"127.0.0.1:{dns_port}"])
            m.info["dns"] = dns_port
        c.wait_ready()
        c.add_borglet(cpu=4, memory="4Gi")
        c.wait_machines(1)
    except Exception:
        print(c.dump_logs())
        c.close()
        raise
    try:
        yield c
    finally:
        c.close()


def dns_ports(cell: Cell) -> list[int]:
    return [int(m.info["dns"]) for m in cell.masters]


def ask(port: int, name: str, rtype: str = "A", tcp: bool = False) -> dns.message.Message:
    """One query, retried over UDP as stub resolvers do (a datagram may be dropped when the
    server's receive queue is full, e.g. right after a flood)."""
    q = dns.message.make_query(name, rtype)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=3)
    for attempt in range(3):
        try:
            return dns.query.udp(q, "127.0.0.1", port=port, timeout=2)
        except dns.exception.Timeout:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def rdata(r: dns.message.Message, rtype: str) -> list[Any]:
    t = dns.rdatatype.from_text(rtype)
    return sorted(str(rd) for rrset in r.answer if rrset.rdtype == t for rd in rrset)


@pytest.fixture(scope="module")
def web(cell: Cell, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 3-replica service with a named port and an exec health check that fails while the
    file `sick` exists in the task's sandbox."""
    job = {
        "name": "web",
        "run_as": "nobody",
        "replicas": 3,
        "requirements": {"cpu": 0.05, "ram": "32Mi", "ports": ["http"]},
        "command": ["sh", "-c", 'echo "name=$BORG_NAME"; exec sleep 100000'],
        "health": {
            "exec": ["sh", "-c", "test ! -e sick"],
            "interval": "500ms",
            "failure_threshold": 1,
        },
        "restart": {"policy": "always", "backoff": "100ms"},
    }
    path = tmp_path_factory.mktemp("web") / "web.json"
    path.write_text(json.dumps(job))
    r = cell.borgcfg("up", str(path), "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    return "web"


def healthy_indexes(cell: Cell) -> set[int]:
    eps = cell.borgcfg_json("endpoints", "web")
    return {e["index"] for e in eps if e["healthy"]}


def test_every_replica_answers_task_job_and_srv_names(cell: Cell, web: str) -> None:
    wait_for(lambda: healthy_indexes(cell) == {0, 1, 2}, 20, what="3 healthy endpoints")
    eps = {e["index"]: e for e in cell.borgcfg_json("endpoints", "web")}
    for port in dns_ports(cell):
        for i in range(3):
            r = wait_for(
                lambda i=i, port=port: (a := ask(port, f"{i}.web.{USER}.{ZONE}")).answer and a,
                10,
                what=f"{i}.web on :{port}",
            )
            assert r.flags & dns.flags.AA
            assert rdata(r, "A") == ["127.0.0.1"]
            assert r.answer[0].ttl == 5
        assert rdata(ask(port, f"web.{USER}.{ZONE}"), "A") == ["127.0.0.1"]
        srv = ask(port, f"_http._tcp.web.{USER}.{ZONE}", "SRV", tcp=True)
        got = sorted(
            (rd.port, str(rd.target)) for rrset in srv.answer for rd in rrset if rd.rdtype == 33
        )
        want = sorted((eps[i]["ports"]["http"], f"{i}.web.{USER}.{ZONE}") for i in range(3))
        assert got == want


def test_names_that_do_not_exist_and_other_zones(cell: Cell, web: str) -> None:
    port = dns_ports(cell)[1]  # a follower or the leader: any replica answers alike
    assert ask(port, f"7.web.{USER}.{ZONE}").rcode() == dns.rcode.NXDOMAIN
    assert ask(port, f"web.someone-else.{ZONE}").rcode() == dns.rcode.NXDOMAIN
    assert ask(port, f"web.{USER}.othercell.borg.").rcode() == dns.rcode.REFUSED
    assert ask(port, "example.com.").rcode() == dns.rcode.REFUSED


def test_each_task_knows_its_own_name(cell: Cell, web: str) -> None:
    out = wait_for(
        lambda: "name=" in (o := cell.borgcfg("logs", "web/1").stdout) and o, 10, what="web/1"
    )
    assert f"name=1.web.{USER}.{ZONE}" in out
    eps = cell.borgcfg_json("endpoints", "web")
    assert {e["name"] for e in eps} == {f"{i}.web.{USER}.{ZONE}" for i in range(3)}
    assert all(e["host"] == "127.0.0.1" and e["machine"] for e in eps)


def sandbox_of(cell: Cell, index: int) -> Path:
    tasks = Path(cell.borglets[0].info["data"], "tasks")
    found = sorted(tasks.glob(f"web.{index}.*"), key=lambda p: p.stat().st_mtime)
    assert found
    return found[-1]


def test_an_unhealthy_task_leaves_dns_and_comes_back(cell: Cell, web: str) -> None:
    wait_for(lambda: healthy_indexes(cell) == {0, 1, 2}, 20, what="3 healthy endpoints")
    port = dns_ports(cell)[0]
    sick = sandbox_of(cell, 2) / "sick"
    sick.write_text("")
    t0 = time.monotonic()
    try:
        wait_for(lambda: not ask(port, f"2.web.{USER}.{ZONE}").answer, 10, what="web/2 out of DNS")
        left = time.monotonic() - t0
        # one health interval (0.5 s) plus the Borglet's next sync, with room for a busy host
        assert left < 5, left
        assert rdata(ask(port, f"0.web.{USER}.{ZONE}"), "A") == ["127.0.0.1"]
        srv = ask(port, f"_http._tcp.web.{USER}.{ZONE}", "SRV")
        targets = {str(rd.target) for rrset in srv.answer for rd in rrset if rd.rdtype == 33}
        assert f"2.web.{USER}.{ZONE}" not in targets
    finally:
        (sandbox_of(cell, 2) / "sick").unlink(missing_ok=True)
    wait_for(lambda: ask(port, f"2.web.{USER}.{ZONE}").answer, 20, what="web/2 back in DNS")


def test_hostile_packets_never_crash_a_replica_or_slow_its_api(cell: Cell, web: str) -> None:
    port = dns_ports(cell)[0]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    junk = [
        b"",
        b"\x00" * 11,
        os.urandom(40),
        b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" + b"a" * 63 * 5,
        os.urandom(3000),
    ]
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 2.0 and sent < 20_000:
        for j in junk:
            s.sendto(j, ("127.0.0.1", port))
            sent += 1
    s.close()
    # A name of the maximum length, an ANY query, and TCP with a bogus length prefix.
    longest = ".".join(["a" * 63] * 3 + ["b" * 61]) + "."
    assert ask(port, longest).rcode() == dns.rcode.REFUSED
    anyq = ask(port, f"0.web.{USER}.{ZONE}", "ANY")
    assert [rr.rdtype for rr in anyq.answer] == [dns.rdatatype.HINFO]
    with socket.create_connection(("127.0.0.1", port), timeout=3) as t:
        t.sendall(b"\xff\xff" + b"x" * 10)
    # A well-framed message that is not a query (QR set) gets no answer: the connection ends.
    with socket.create_connection(("127.0.0.1", port), timeout=3) as t:
        t.sendall(b"\x00\x10" + b"\xff" * 16)
        assert t.recv(2) == b""
    assert rdata(ask(port, f"0.web.{USER}.{ZONE}"), "A") == ["127.0.0.1"]
    t0 = time.monotonic()
    assert cell.borgcfg("status", "web").returncode == 0
    assert time.monotonic() - t0 < 5
    assert "Traceback" not in cell.masters[0].log()
    assert all(m.alive() for m in cell.masters)
