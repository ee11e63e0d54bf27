"""The pure parts of identities and authorization: certificates from `borgmaster ca`, the
identity they state, UI session tokens, the acting-user rules, the dev cell record, the audit
log's format and rotation, and the one-line start-up refusals of a wrong `--tls-dir`."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from borglet.cli import main as borglet_main
from borgmaster import ca
from borgmaster.auth import Denied, acting_user, check_machine, may_see_secrets
from borgmaster.cli import main as master_main
from borgmaster.sessions import check_token, make_token, session_key
from cfg.errors import ConfigError
from cfg.grpcauth import AuditLog
from cfg.tls import (
    INSECURE,
    Identity,
    Role,
    TlsDir,
    cert_identity,
    dev_tls_dir,
    identity_from_names,
    record_dev_cell,
)


@pytest.fixture
def ca_dir(tmp_path: Path) -> str:
    d = str(tmp_path / "ca")
    ca.init_ca(d, "test")
    return d


def test_issued_certificates_state_name_and_role(ca_dir: str, tmp_path: Path) -> None:
    for role, name in (("admin", "ops"), ("user", "alice"), ("borglet", "node-a")):
        out = str(tmp_path / name)
        got = ca.issue(ca_dir, role, name, out, ["127.0.0.1", "m.example"])
        assert got.role is Role(role)
        assert cert_identity(os.path.join(out, "tls.crt")) == Identity(name, Role(role))
        assert stat.S_IMODE(os.stat(os.path.join(out, "tls.key")).st_mode) == 0o600
        tls = TlsDir.load(out)
        assert tls.ca == Path(ca_dir, "ca.crt").read_bytes()
    assert stat.S_IMODE(os.stat(os.path.join(ca_dir, "ca.key")).st_mode) == 0o600


def test_ca_refuses_bad_roles_names_and_a_second_init(ca_dir: str, tmp_path: Path) -> None:
    with pytest.raises(ca.CaError, match="--role: 'root' is not one of"):
        ca.issue(ca_dir, "root", "x", str(tmp_path / "x"))
    with pytest.raises(ca.CaError, match="--name: 'Bob Smith' must be lower case"):
        ca.issue(ca_dir, "user", "Bob Smith", str(tmp_path / "x"))
    with pytest.raises(ca.CaError, match="a CA is already there"):
        ca.init_ca(ca_dir)
    with pytest.raises(ca.CaError, match="no CA here"):
        ca.issue(str(tmp_path / "nothing"), "user", "x", str(tmp_path / "x"))


def test_identity_needs_exactly_one_known_role() -> None:
    assert identity_from_names(["a"], ["user.role.borgcell", "x.example"]) == Identity(
        "a", Role.USER
    )
    assert identity_from_names(["a"], ["user.role.borgcell", "admin.role.borgcell"]) is None
    assert identity_from_names(["a"], ["root.role.borgcell"]) is None
    assert identity_from_names(["a"], []) is None
    assert identity_from_names(["A B"], ["user.role.borgcell"]) is None
    assert identity_from_names([], ["user.role.borgcell"]) is None


def test_tls_dir_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read ca.crt: No such file"):
        TlsDir.load(str(tmp_path))
    for f in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / f).write_text("not pem")
    with pytest.raises(ConfigError, match=r"ca\.crt is not PEM"):
        TlsDir.load(str(tmp_path))


def test_session_tokens_expire_and_resist_tampering() -> None:
    key = session_key("s" * 32)
    alice = Identity("alice", Role.USER)
    t = make_token(key, alice, "login", now_ms=1000, ttl_s=60)
    assert check_token(key, t, "login", now_ms=2000) == alice
    assert check_token(key, t, "login", now_ms=1000 + 61_000) is None  # expired
    assert check_token(key, t, "session", now_ms=2000) is None  # a login is not a session
    assert check_token(session_key("t" * 32), t, "login", now_ms=2000) is None  # other cell
    _, mac = t.split(".")
    forged = make_token(key, Identity("alice", Role.ADMIN), "login", 1000, 60).split(".")[0]
    assert check_token(key, f"{forged}.{mac}", "login", now_ms=2000) is None
    assert check_token(key, "garbage", "login", 0) is None
    assert check_token(key, "a.b", "login", 0) is None


def test_acting_user_comes_from_the_certificate() -> None:
    alice = Identity("alice", Role.USER)
    assert acting_user(alice, "") == "alice"
    assert acting_user(alice, "alice") == "alice"
    with pytest.raises(Denied, match="alice may not act as user 'bob'"):
        acting_user(alice, "bob")
    assert acting_user(Identity("ops", Role.ADMIN), "") == ""  # admins act on every job
    assert acting_user(INSECURE, "whoever") == "whoever"  # a plaintext cell: SPEC part 1


def test_secrets_only_for_owner_and_admin() -> None:
    assert may_see_secrets(Identity("alice", Role.USER), "alice")
    assert not may_see_secrets(Identity("bob", Role.USER), "alice")
    assert not may_see_secrets(Identity("alice", Role.READER), "alice")
    assert not may_see_secrets(Identity("alice", Role.MASTER), "alice")
    assert may_see_secrets(Identity("ops", Role.ADMIN), "alice")
    assert may_see_secrets(INSECURE, "alice")


def test_a_borglet_syncs_only_as_its_machine() -> None:
    check_machine(Identity("node-a", Role.BORGLET), "node-a")
    with pytest.raises(Denied, match="node-a \\(borglet\\) may not sync as machine 'node-b'"):
        check_machine(Identity("node-a", Role.BORGLET), "node-b")
    with pytest.raises(Denied):
        check_machine(Identity("node-a", Role.BORGLET), "NODE-A")


def test_dev_cell_record_is_found_for_its_address_only(
    ca_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    out = str(tmp_path / "admin")
    ca.issue(ca_dir, "admin", "me", out)
    assert dev_tls_dir(["127.0.0.1:7070"]) is None
    record_dev_cell("127.0.0.1:7070", out)
    assert dev_tls_dir(["127.0.0.1:7070"]) == out
    assert dev_tls_dir(["127.0.0.1:7071"]) is None
    assert dev_tls_dir(["127.0.0.1:7070", "127.0.0.1:7071"]) is None


def test_audit_log_lines_and_rotation(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    log = AuditLog(str(p))
    log.record(Identity("bob", Role.USER), "KillJob", "web", "r1", "PERMISSION_DENIED: no")
    os.rename(p, tmp_path / "audit.jsonl.1")  # logrotate moves the file away
    log.record(Identity("ops", Role.ADMIN, via="m1"), "SetQuota", "bob/batch", "", "ok")
    log.close()
    old = json.loads((tmp_path / "audit.jsonl.1").read_text())
    assert old["identity"] == "bob" and old["role"] == "user" and old["target"] == "web"
    assert old["result"].startswith("PERMISSION_DENIED")
    new = json.loads(p.read_text())
    assert new["via"] == "m1" and new["method"] == "SetQuota" and new["result"] == "ok"
    assert set(new) >= {"ts", "identity", "role", "method", "target", "request_id", "result"}
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_ca_commands_and_wrong_tls_dirs_fail_in_one_line(ca_dir: str, tmp_path: Path) -> None:
    r = CliRunner().invoke(master_main, ["ca", "init", "--dir", ca_dir])
    assert r.exit_code == 1 and "a CA is already there" in r.output
    user_dir = str(tmp_path / "u")
    r = CliRunner().invoke(
        master_main,
        ["ca", "issue", "--dir", ca_dir, "--role", "user", "--name", "u", "--out", user_dir],
    )
    assert r.exit_code == 0 and "user u:" in r.output
    base = ["run", "--id", "m0", "--raft", "127.0.0.1:1", "--grpc", "127.0.0.1:2"]
    base += ["--http", "127.0.0.1:3", "--data-dir", str(tmp_path / "d")]
    r = CliRunner().invoke(master_main, [*base, "--tls-dir", user_dir])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].endswith("is a user's certificate, not a master's")
    r = CliRunner().invoke(master_main, [*base, "--tls-dir", str(tmp_path / "none")])
    assert r.exit_code == 2 and "cannot read ca.crt" in r.output
    b_dir = str(tmp_path / "b")
    ca.issue(ca_dir, "borglet", "node-a", b_dir)
    r = CliRunner().invoke(
        borglet_main,
        [
            *("run", "--name", "node-b", "--master", "127.0.0.1:1"),
            *("--grpc", "127.0.0.1:2", "--http", "127.0.0.1:3"),
            *("--data-dir", str(tmp_path / "x"), "--tls-dir", b_dir),
        ],
    )
    assert r.exit_code == 2
    assert "the certificate is for borglet node-a, not borglet node-b" in r.output
