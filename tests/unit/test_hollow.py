"""Hollow machines (borglet/hollow.py): the pure per-machine state, the names and addresses
they take, the node authorizer's rule for hollow certificates, and the CLI's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from borglet.cli import main as borglet_main
from borglet.hollow import (
    KILLED,
    RUNNING,
    SYNC_WAIT_MS,
    HollowMachine,
    loopback_address,
    machine_name,
    make_machines,
)
from borglet.link import FULL_SET_EVERY_S
from borgmaster import ca
from borgmaster.auth import RULES, Denied, check_machine
from cfg.tls import Identity, Role
from proto.borg.v1 import borg_pb2 as pb


def desired(*keys: tuple[str, int, str]) -> list[pb.DesiredTask]:
    return [pb.DesiredTask(job=j, index=i, incarnation=inc, version=1) for j, i, inc in keys]


def machine(start_s: float = 0.0) -> HollowMachine:
    return make_machines(1, "hollow-", 8, 1 << 30, {"zone": "a"}, int(start_s * 1000))[0]


def test_names_and_loopback_addresses_are_distinct() -> None:
    assert machine_name("hollow-", 7) == "hollow-00007"
    addrs = {loopback_address(i) for i in range(100_000)}
    assert len(addrs) == 100_000
    assert all(a.startswith("127.") for a in addrs)
    assert not any(a.startswith("127.0.") or a.endswith((".0", ".255")) for a in addrs)


def test_desired_tasks_are_reported_running_and_then_killed_once() -> None:
    m = machine()
    assert m.wait_ms(0.0) == 0  # the first sync registers without waiting
    m.connected, m.dirty = True, False
    assert m.wait_ms(0.0) == SYNC_WAIT_MS
    m.on_desired(desired(("web", 0, "a"), ("web", 1, "b")), now=10.0)
    assert m.dirty and m.wait_ms(10.0) == 0
    sent = m.reports()
    assert [(o.job, o.index, o.state, o.exit_code) for o in sent] == [
        ("web", 0, RUNNING, -1),
        ("web", 1, RUNNING, -1),
    ]
    m.dirty = False
    m.reported(sent)
    # web/1 is no longer wanted: reported killed in the next sync, then forgotten
    m.on_desired(desired(("web", 0, "a")), now=11.0)
    assert m.dirty
    sent = m.reports()
    assert {(o.index, o.state) for o in sent} == {(0, RUNNING), (1, KILLED)}
    m.reported(sent)
    assert [o.index for o in m.reports()] == [0]
    # a killed task wanted again (a new desired set naming it) starts afresh
    m.on_desired(desired(("web", 0, "a"), ("web", 1, "b")), now=12.0)
    assert {(o.index, o.state) for o in m.reports()} == {(0, RUNNING), (1, RUNNING)}


def test_a_task_is_running_only_after_start_ms() -> None:
    m = machine(start_s=2.0)
    m.connected, m.dirty = True, False
    m.on_desired(desired(("batch", 0, "x")), now=100.0)
    assert m.reports() == [] and not m.dirty
    assert m.wait_ms(100.5) == SYNC_WAIT_MS
    assert m.wait_ms(101.5) == 500  # the long poll ends when the task is due
    m.advance(101.9)
    assert m.reports() == []
    m.advance(102.0)
    assert [o.state for o in m.reports()] == [RUNNING] and m.dirty


def test_the_sync_request_describes_a_loopback_machine() -> None:
    m = machine()
    req = m.request(wait_ms=0)
    assert req.machine == "hollow-00000"
    assert req.address.startswith("127.") and req.http.startswith("127.")
    assert req.capacity.cpu == 8 and req.capacity.ram == 1 << 30
    assert dict(req.attrs) == {"zone": "a"} and req.known_generation == -1


def test_a_hollow_certificate_syncs_only_as_its_numbered_machines() -> None:
    hollow = Identity("hollow", Role.HOLLOW)
    for name in ("hollow-00000", "hollow00042", "hollow.99999"):
        check_machine(hollow, name)
    for name in ("hollow-0001", "hollow-000001", "hollow-x0001", "node-a", "hollowa00001", "h"):
        with pytest.raises(Denied):
            check_machine(hollow, name)
    # a real Borglet's certificate never gets the prefix rule
    with pytest.raises(Denied):
        check_machine(Identity("hollow", Role.BORGLET), "hollow-00000")
    assert Role.HOLLOW in RULES["Sync"].roles and Role.HOLLOW in RULES["Link"].roles
    as_machine = ("Sync", "Link")
    assert all(Role.HOLLOW not in r.roles for m, r in RULES.items() if m not in as_machine)


def test_hollow_cli_refuses_a_certificate_of_another_role_or_prefix(tmp_path: Path) -> None:
    ca_dir = str(tmp_path / "ca")
    ca.init_ca(ca_dir)
    ca.issue(ca_dir, "borglet", "hollow", str(tmp_path / "borglet"))
    ca.issue(ca_dir, "hollow", "other", str(tmp_path / "other"))
    base = ["hollow", "--count", "1", "--master", "127.0.0.1:1", "--name-prefix", "hollow-"]
    for d in ("borglet", "other"):
        r = CliRunner().invoke(borglet_main, [*base, "--tls-dir", str(tmp_path / d)])
        assert r.exit_code == 2, r.output
        assert "not a hollow certificate for --name-prefix hollow-" in r.output


def test_an_unchanged_reply_keeps_the_desired_set() -> None:
    m = machine()
    req = m.request(0, now=1.0)
    assert not req.accepts_unchanged  # nothing held yet: the full set
    m.on_reply(req, pb.SyncResponse(generation=7, tasks=desired(("web", 0, "a"))), now=1.0)
    assert m.generation == 7 and [o.index for o in m.reports()] == [0]
    req = m.request(1000, now=2.0)
    assert req.accepts_unchanged and req.known_generation == 7
    m.on_reply(req, pb.SyncResponse(generation=7, unchanged=True), now=2.0)
    assert [o.state for o in m.reports()] == [RUNNING]  # kept, not killed
    # an `unchanged` for a set it does not hold: ask for the full set again
    m.on_reply(req, pb.SyncResponse(generation=8, unchanged=True), now=3.0)
    assert m.generation == -1 and not m.request(0, now=3.0).accepts_unchanged
    # and at least every FULL_SET_EVERY_S the full set is asked for anyway
    m.generation = 7
    assert not m.request(1000, now=1.0 + FULL_SET_EVERY_S).accepts_unchanged
