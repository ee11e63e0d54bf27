"""The pure parts of "no job reaches root": the run_as policy (borglet.accounts), the master's
admission of run_as (Store), the Raft frame bounds (borgmaster.raft_guard) and the local-peer
lookup (borglet.peers). The end-to-end attacks are in tests/integration/test_hostile_*.py."""

from __future__ import annotations

import grp
import os
import socket
import struct
from pathlib import Path

import pytest

from borglet.accounts import Account, AccountError, TaskAccounts, privilege
from borglet.peers import local_owner, parse_peer
from borgmaster import commands as C
from borgmaster.model import MACHINE_LOST, Machine, Resources
from borgmaster.raft_guard import MAX_FRAME, PRE_AUTH_MAX_FRAME, frame_too_large
from tests.unit.test_store import Cell, GiB, spec

# ----- run_as policy ----------------------------------------------------------------------


def test_only_listed_accounts_are_allowed_and_the_default_always_is() -> None:
    policy = TaskAccounts.of("nobody", ["daemon"], allow_root=False)
    assert policy.allowed == ("nobody", "daemon")
    assert policy.resolve("").name == "nobody"
    assert policy.resolve("daemon").uid == 1
    with pytest.raises(AccountError, match="'bin' is not allowed on this machine"):
        policy.resolve("bin")


def test_root_and_root_equivalent_accounts_are_refused_without_allow_root() -> None:
    with pytest.raises(AccountError, match=r"'root' is privileged \(uid 0\)"):
        TaskAccounts.of("nobody", ["root"], allow_root=False).resolve("root")
    assert TaskAccounts.of("nobody", ["root"], allow_root=True).resolve("root").uid == 0
    with pytest.raises(AccountError, match="privileged"):
        TaskAccounts.of("root", [], allow_root=False).check_all()


@pytest.mark.parametrize("group", ["disk", "sudo", "adm", "shadow"])
def test_members_of_privileged_groups_are_root_equivalent(group: str) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        pytest.skip(f"no group {group} here")
    member = Account(name="x", uid=1234, gid=1234, groups=(1234, gid))
    assert privilege(member) == f"group '{group}'"
    assert privilege(Account(name="x", uid=1234, gid=gid, groups=())) == f"group '{group}'"
    assert privilege(Account(name="x", uid=1234, gid=0, groups=())) == "gid 0"
    assert privilege(Account(name="x", uid=1234, gid=1234, groups=(1234,))) == ""


def test_an_unknown_account_is_refused_with_its_name() -> None:
    with pytest.raises(AccountError, match="'no-such-account' does not exist"):
        TaskAccounts.of("nobody", ["no-such-account"], False).resolve("no-such-account")


# ----- admission of run_as by the master ---------------------------------------------------


def register(cell: Cell, name: str, task_users: list[str]) -> None:
    m = Machine(
        name=name,
        address=f"{name}:1",
        capacity=Resources(cpu=4, ram=8 * GiB, disk=GiB),
        task_users=task_users,
    )
    cell.apply(C.RegisterMachine(ts_ms=1, machine=m))


def test_run_as_no_live_machine_allows_is_refused_and_changes_nothing() -> None:
    cell = Cell()
    register(cell, "a", ["nobody"])
    register(cell, "b", ["nobody", "www"])
    before = cell.store.digest()
    r = cell.submit(spec(run_as="daemon"))
    assert r["error"] == "invalid" and "'daemon'" in r["message"], r
    assert "nobody, www" in r["message"]
    assert cell.store.digest() == before
    assert cell.submit(spec(name="ok", run_as="www"))["result"] == "created"
    assert cell.submit(spec(name="dflt"))["result"] == "created"


def test_run_as_is_accepted_when_the_master_cannot_know() -> None:
    cell = Cell()
    assert cell.submit(spec(name="nomachines", run_as="daemon"))["result"] == "created"
    register(cell, "old", [])  # a Borglet that does not report its accounts
    register(cell, "new", ["nobody"])
    assert cell.submit(spec(name="unknown", run_as="daemon"))["result"] == "created"


def test_lost_machines_do_not_count_for_run_as() -> None:
    cell = Cell()
    register(cell, "a", ["nobody"])
    register(cell, "b", ["daemon"])
    cell.apply(C.MachineLost(ts_ms=2, name="b"))
    assert cell.store.machines["b"].state == MACHINE_LOST
    r = cell.submit(spec(run_as="daemon"))
    assert r.get("error") == "invalid", r


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


# ----- local peers --------------------------------------------------------------------------


def test_parse_peer_reads_grpc_peer_strings() -> None:
    assert parse_peer("ipv4:127.0.0.1:5555") == ("127.0.0.1", 5555)
    assert parse_peer("ipv6:[::1]:80") == ("::1", 80)
    assert parse_peer("unix:/tmp/x") is None
    assert parse_peer("ipv4:nonsense") is None


def test_local_owner_finds_the_uid_of_a_local_client_socket(tmp_path: Path) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as client:
            conn, (host, port) = srv.accept()
            with conn:
                assert local_owner(f"ipv4:{host}:{port}") == os.geteuid()
                assert client.getsockname() == (host, port)
    assert local_owner("ipv4:192.0.2.1:1") is None  # not a socket of this machine
    missing = str(tmp_path / "none")
    assert local_owner("ipv4:127.0.0.1:1", tables=(missing,)) is None
