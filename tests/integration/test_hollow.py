"""A TLS cell under 300 hollow machines (`borglet hollow`, one process): they register, a
600-task job is reported running on them and killed again, nobody is declared lost, and the
hollow certificate syncs as its own numbered machines only. Needs no root (nothing runs)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cfg.grpcauth import secure_channel
from cfg.tls import TlsDir
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import Cell, wait_for

pytestmark = [pytest.mark.e2e]

MACHINES = 300
TASKS = 600


@pytest.fixture
def cell() -> Iterator[Cell]:
    c = Cell(tls=True)
    try:
        c.start(masters=1, borglets=0)
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


def states(cell: Cell, job: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in cell.job(job)["tasks"]:
        out[t["state"]] = out.get(t["state"], 0) + 1
    return out


def test_hollow_fleet_registers_runs_and_kills_a_job(cell: Cell, tmp_path: Path) -> None:
    t0 = time.monotonic()
    flags = ["--cpu", "4", "--memory", "8Gi", "--start-ms", "100", "--ramp-s", "0.5"]
    hollow = cell.add_hollow(MACHINES, "hollow-", flags)
    cell.wait_machines(MACHINES, timeout=60)
    t_registered = time.monotonic() - t0
    ms = cell.borgcfg_json("machines")
    names = sorted(m["name"] for m in ms)
    assert names[0] == "hollow-00000" and names[-1] == f"hollow-{MACHINES - 1:05d}"

    job = tmp_path / "wide.yaml"
    job.write_text(
        f"name: wide\nreplicas: {TASKS}\ncommand: 'sleep 1000'\n"
        "requirements: {cpu: 0.01, ram: 1Mi}\n"
    )
    r = cell.borgcfg("up", str(job))
    assert r.returncode == 0, r.stderr
    t1 = time.monotonic()
    wait_for(lambda: states(cell, "wide").get("running") == TASKS, 60, 0.5, "all running")
    t_running = time.monotonic() - t1
    spread = {t["machine"] for t in cell.job("wide")["tasks"]}
    assert len(spread) > MACHINES // 2  # spread over the fleet, not piled on a few

    t2 = time.monotonic()
    assert cell.borgcfg("down", "wide").returncode == 0
    wait_for(lambda: states(cell, "wide").get("killed") == TASKS, 60, 0.5, "all killed")
    t_killed = time.monotonic() - t2

    log = cell.masters[0].log()
    assert " lost: no contact" not in log
    assert hollow.alive()
    print(f"registered {t_registered:.1f} s, running {t_running:.1f} s, killed {t_killed:.1f} s")
    assert time.monotonic() - t0 < 90


def test_a_hollow_certificate_syncs_only_as_its_own_machines(cell: Cell) -> None:
    tls = TlsDir.load(cell.cert("hollow", "hollow"))
    stub = borg_pb2_grpc.BorgmasterStub(secure_channel(cell.masters[0].info["grpc"], tls))

    def sync(machine: str) -> pb.SyncResponse:
        req = pb.SyncRequest(
            machine=machine,
            address="127.1.0.1:1",
            http="127.1.0.1:2",
            capacity=pb.Resources(cpu=1, ram=1 << 30, disk=1 << 30),
            wait_ms=0,
        )
        return stub.Sync(req, timeout=10)

    sync("hollow-00001")
    for other in ("node-a", "hollow-1", "hollowx00001"):
        with pytest.raises(grpc.RpcError) as e:
            sync(other)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, other
    # and a real Borglet's certificate named like the prefix gets no such rule
    real = TlsDir.load(cell.cert("borglet", "hollow"))
    stub = borg_pb2_grpc.BorgmasterStub(secure_channel(cell.masters[0].info["grpc"], real))
    with pytest.raises(grpc.RpcError) as e:
        sync("hollow-00002")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def link_once(stub: borg_pb2_grpc.BorgmasterStub, first: pb.LinkUp) -> pb.LinkDown:
    """Open a Link stream with `first` and return the replica's first push."""
    call = stub.Link(iter([first]), timeout=10)
    try:
        return next(iter(call))
    finally:
        call.cancel()


def test_a_link_stream_opens_only_for_the_certificates_own_machines(cell: Cell) -> None:
    addr = cell.masters[0].info["grpc"]
    stub = borg_pb2_grpc.BorgmasterStub(
        secure_channel(addr, TlsDir.load(cell.cert("hollow", "hollow")))
    )

    def hello(machine: str) -> pb.LinkUp:
        up = pb.LinkUp(seq=1)
        up.hello.machine = machine
        up.hello.address = "127.1.0.1:1"
        up.hello.capacity.CopyFrom(pb.Resources(cpu=1, ram=1 << 30, disk=1 << 30))
        return up

    down = link_once(stub, hello("hollow-00003"))
    assert down.full and not down.upserts and down.heartbeat_ms >= 1000
    for other in ("node-a", "hollow-1"):
        with pytest.raises(grpc.RpcError) as e:
            link_once(stub, hello(other))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, other
    # a stream that does not start with a registration is refused, and the server goes on
    with pytest.raises(grpc.RpcError) as e:
        link_once(stub, pb.LinkUp(seq=1))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello" in (e.value.details() or "")
    # a Borglet certificate may not link as another machine; a user may not link at all
    real = TlsDir.load(cell.cert("borglet", "node-b"))
    with pytest.raises(grpc.RpcError) as e:
        link_once(borg_pb2_grpc.BorgmasterStub(secure_channel(addr, real)), hello("node-c"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    user = TlsDir.load(cell.cert("user", "alice"))
    with pytest.raises(grpc.RpcError) as e:
        link_once(borg_pb2_grpc.BorgmasterStub(secure_channel(addr, user)), hello("node-c"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # nor relay reports as if it were a replica
    with pytest.raises(grpc.RpcError) as e:
        borg_pb2_grpc.BorgmasterStub(secure_channel(addr, real)).RelayLink(
            pb.RelayLinkRequest(seen=["node-b"]), timeout=10
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert link_once(stub, hello("hollow-00004")).full  # still serving
