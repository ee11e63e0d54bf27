"""Identity and authorization end to end (SPEC part 2, "Cell CA and mutual TLS",
"Authorization", "Audit"): three real masters and a real Borglet with certificates from the
cell's own CA (`borgmaster ca`), real TLS on every gRPC and HTTP port, borgcfg as different
people.

Covers: no certificate, a certificate of another CA and an expired one are refused before any
handler runs; a user acting on another's job (also by claiming `--user`); a reader writing;
production priority without quota; env and logs for owners only (also through a follower that
relays to the leader); a Borglet posing as another machine; a user calling a Borglet directly;
the web UI and Borglet /metrics without an identity; the UI login link; the audit records.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from borgmaster import ca
from cfg.grpcauth import secure_channel
from cfg.tls import Role, TlsDir
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import REPO, Cell, Proc, free_port, running_cell, wait_for
from tests.conftest import cgroups_usable

pytestmark = [pytest.mark.e2e]

JOB = """\
name: {name}
kind: service
priority: {priority}
replicas: 1
command: echo secret-output-of-{name}; exec sleep 600
env:
  API_TOKEN: hunter2-{name}
requirements:
  cpu: 0.05
  ram: 32Mi
"""


@pytest.fixture(scope="module")
def cell() -> Iterator[Cell]:
    why = cgroups_usable()
    if why:
        pytest.skip(why)
    with running_cell(3, 1, tls=True, audit=True) as c:
        yield c


def person(cell: Cell, role: str, name: str) -> str:
    return cell.cert(role, name, hosts=())


def as_(cell: Cell, who: str, *args: str, master: str | None = None) -> Any:
    return cell.borgcfg(*args, tls_dir=who, master=master)


def last_line(r: subprocess.CompletedProcess[str]) -> str:
    return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""


def up(cell: Cell, who: str, tmp: Path, name: str, priority: int = 100) -> Any:
    f = tmp / f"{name}.yaml"
    f.write_text(JOB.format(name=name, priority=priority))
    return as_(cell, who, "up", str(f), "--wait", "--timeout", "60")


def follower(cell: Cell) -> str:
    lead = cell.leader()
    return next(m.info["grpc"] for m in cell.masters if m is not lead)


# ----- who may connect -------------------------------------------------------------------


def test_plaintext_foreign_ca_and_expired_certificates_are_refused(
    cell: Cell, tmp_path: Path
) -> None:
    addr = cell.masters[0].info["grpc"]
    # no TLS at all: the handshake never completes, nothing is served
    with grpc.insecure_channel(addr) as ch, pytest.raises(grpc.RpcError) as e:
        borg_pb2_grpc.BorgmasterStub(ch).ListJobs(pb.ListJobsRequest(), timeout=3)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # TLS without a client certificate
    ca_pem = Path(cell.cert("admin", "admin"), "ca.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(ca_pem)
    opts = [("grpc.ssl_target_name_override", "master.role.borgcell")]
    with grpc.secure_channel(addr, creds, options=opts) as ch, pytest.raises(grpc.RpcError) as e:
        borg_pb2_grpc.BorgmasterStub(ch).ListJobs(pb.ListJobsRequest(), timeout=3)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE

    # an admin certificate from another CA, and an expired one from the right CA
    other = tmp_path / "other-ca"
    ca.init_ca(str(other))
    ca.issue(str(other), "admin", "admin", str(tmp_path / "foreign"))
    expired = cell.cert(
        "admin", "admin", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    )
    for tls in (str(tmp_path / "foreign"), expired):
        f = tmp_path / "evil.yaml"
        f.write_text(JOB.format(name="evil", priority=100))
        r = as_(cell, tls, "up", str(f))
        assert r.returncode == 3, r.stderr
        assert "cell unreachable" in last_line(r) and "Traceback" not in r.stderr
    # borgcfg without --tls-dir (plaintext) against the TLS cell
    argv = [sys.executable, "-m", "cfg.cli", "--master", cell.master_addrs, "status"]
    env = {k: v for k, v in os.environ.items() if k != "BORG_TLS_DIR"}
    env["XDG_CONFIG_HOME"] = str(tmp_path)  # no dev cell recorded there
    r2 = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert r2.returncode == 3, r2.stderr
    assert all(j["name"] != "evil" for j in cell.borgcfg_json("status"))


def test_a_server_that_is_not_a_master_is_refused_by_the_client(cell: Cell) -> None:
    """borgcfg verifies the server's role: a Borglet's port (valid cell certificate, wrong
    role) is not a master."""
    borglet_grpc = cell.borglets[0].info["grpc"]
    r = cell.borgcfg("status", master=borglet_grpc)
    assert r.returncode == 3
    assert "not a borgcell master" in r.stderr


# ----- what each role may do -------------------------------------------------------------


def test_users_act_only_on_their_own_jobs(cell: Cell, tmp_path: Path) -> None:
    alice, bob = person(cell, "user", "alice"), person(cell, "user", "bob")
    r = up(cell, alice, tmp_path, "alices")
    assert r.returncode == 0, r.stderr
    st = json.loads(as_(cell, alice, "status", "alices", "-o", "json").stdout)
    assert st["user"] == "alice"  # the owner is the certificate's name, not the login name

    r = as_(cell, bob, "down", "alices")
    assert r.returncode == 1
    assert last_line(r) == "borgcfg: permission denied: bob may not kill job 'alices' (owner alice)"
    # claiming to be alice changes nothing: --user must match the certificate
    r = as_(cell, bob, "--user", "alice", "down", "alices")
    assert r.returncode == 1
    assert "permission denied: bob may not act as user 'alice'" in last_line(r)
    # nor does naming alice as the owner in the spec
    f = tmp_path / "steal.yaml"
    f.write_text(JOB.format(name="alices", priority=100).replace("replicas: 1", "replicas: 2"))
    f.write_text(f.read_text() + "user: alice\n")
    r = as_(cell, bob, "up", str(f))
    assert r.returncode == 1
    assert last_line(r) == (
        "borgcfg: permission denied: bob may not submit job 'alices' as user 'alice'"
    )
    r = as_(cell, bob, "rollback", "alices")
    assert r.returncode == 1 and "permission denied: bob may not roll back" in last_line(r)
    st = json.loads(as_(cell, alice, "status", "alices", "-o", "json").stdout)
    assert st["state"] == "running" and st["replicas"] == 1 and st["version"] == 1
    # an admin may act on anyone's job
    r = cell.borgcfg("down", "alices")
    assert r.returncode == 0, r.stderr


def test_readers_read_and_never_write(cell: Cell, tmp_path: Path) -> None:
    rita = person(cell, "reader", "rita")
    assert as_(cell, rita, "status").returncode == 0
    assert as_(cell, rita, "machines").returncode == 0
    r = up(cell, rita, tmp_path, "ritas")
    assert r.returncode == 1
    assert last_line(r) == "borgcfg: permission denied: rita (reader) may not submit jobs"
    r = as_(cell, rita, "drain", cell.borglets[0].info["name"])
    assert r.returncode == 1
    assert last_line(r) == "borgcfg: permission denied: rita (reader) may not drain machines"
    alice = person(cell, "user", "alice")
    r = as_(cell, alice, "quota", "set", "alice", "production", "cpu=100")
    assert r.returncode == 1
    assert last_line(r) == "borgcfg: permission denied: alice (user) may not set quotas"
    r = as_(cell, alice, "cell", "remove", "127.0.0.1:1")
    assert r.returncode == 1 and "may not change the cell's membership" in last_line(r)


def test_production_priority_needs_quota_from_an_admin(cell: Cell, tmp_path: Path) -> None:
    carol = person(cell, "user", "carol")
    r = up(cell, carol, tmp_path, "carolprod", priority=200)
    assert r.returncode == 1
    assert "permission denied: carol has no quota in the production band" in last_line(r)
    assert all(j["name"] != "carolprod" for j in cell.borgcfg_json("status"))
    r = cell.borgcfg("quota", "set", "carol", "production", "cpu=1", "ram=1Gi")
    assert r.returncode == 0, r.stderr
    r = up(cell, carol, tmp_path, "carolprod", priority=200)
    assert r.returncode == 0, r.stderr
    assert as_(cell, carol, "down", "carolprod").returncode == 0


def test_env_and_logs_only_for_the_owner_also_through_a_follower(
    cell: Cell, tmp_path: Path
) -> None:
    dave, erin = person(cell, "user", "dave"), person(cell, "user", "erin")
    rita = person(cell, "reader", "rita")
    assert up(cell, dave, tmp_path, "daves").returncode == 0
    via = follower(cell)
    admin = cell.cert("admin", "admin")
    for who, sees in ((dave, True), (erin, False), (rita, False), (admin, True)):
        with secure_channel(via, TlsDir.load(who)) as ch:
            job = borg_pb2_grpc.BorgmasterStub(ch).GetJob(pb.GetJobRequest(name="daves"))
        assert job.user == "dave" and job.replicas == 1
        assert ("hunter2-daves" in str(job.spec)) is sees, who
    wait_for(
        lambda: b"secret-output-of-daves" in _logs(cell, dave, "daves/0"),
        30,
        what="owner reads logs",
    )
    r = as_(cell, erin, "logs", "daves/0", master=via)
    assert r.returncode == 1
    assert last_line(r) == (
        "borgcfg: permission denied: erin may not read the logs of job 'daves' (owner dave)"
    )
    assert "secret-output" not in r.stdout
    r = as_(cell, rita, "logs", "daves/0")
    assert r.returncode == 1 and "rita (reader) may not read task logs" in last_line(r)


def _logs(cell: Cell, who: str, task: str) -> bytes:
    r = cell.borgcfg("logs", task, tls_dir=who)
    return r.stdout.encode() if r.returncode == 0 else b""


def test_a_borglet_may_sync_only_as_its_own_machine(cell: Cell) -> None:
    victim = cell.borglets[0].info["name"]
    evil = TlsDir.load(cell.cert("borglet", "evil-node"))
    addr = cell.leader().info["grpc"]
    with secure_channel(addr, evil) as ch:
        stub = borg_pb2_grpc.BorgmasterStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Sync(pb.SyncRequest(machine=victim, address="127.0.0.1:1"), timeout=5)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"evil-node (borglet) may not sync as machine '{victim}'" in (e.value.details())
        # and a Borglet certificate reads nothing else
        with pytest.raises(grpc.RpcError) as e:
            stub.ListJobs(pb.ListJobsRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    m = next(m for m in cell.borgcfg_json("machines") if m["name"] == victim)
    assert m["state"] == "up" and m["address"] == cell.borglets[0].info["grpc"]


def test_borglets_serve_logs_to_masters_only(cell: Cell, tmp_path: Path) -> None:
    admin = TlsDir.load(cell.cert("admin", "admin"))
    b = cell.borglets[0].info
    req = pb.ReadLogsRequest(job="daves", index=0)
    with (
        secure_channel(b["grpc"], admin, Role.BORGLET, machine=b["name"]) as ch,
        pytest.raises(grpc.RpcError) as e,
    ):
        list(borg_pb2_grpc.BorgletStub(ch).ReadLogs(req, timeout=5))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # the master reaching the Borglet checks the machine's certificate names that machine
    master = TlsDir.load(cell.cert("master", "m0"))
    with (
        secure_channel(b["grpc"], master, Role.BORGLET, machine="some-other-machine") as ch,
        pytest.raises(grpc.RpcError) as e,
    ):
        list(borg_pb2_grpc.BorgletStub(ch).ReadLogs(pb.ReadLogsRequest(), timeout=5))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


# ----- HTTP ------------------------------------------------------------------------------


def _https(addr: str, path: str, tls: TlsDir | None, cookie: str = "") -> tuple[int, Any]:
    """GET with the cell CA trusted and, when given, a client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=(tls or TlsDir.load(_any_dir)).ca.decode())
    if tls is not None:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=5, context=ctx)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        r = conn.getresponse()
        return r.status, (r.read(), dict(r.getheaders()))
    finally:
        conn.close()


_any_dir = ""


def test_http_needs_an_identity_except_health(cell: Cell) -> None:
    global _any_dir
    _any_dir = cell.cert("admin", "admin")
    m = cell.masters[0].info["http"]
    b = cell.borglets[0].info["http"]
    for addr, path in ((m, "/healthz"), (m, "/readyz"), (b, "/healthz")):
        assert _https(addr, path, None)[0] == 200
    for addr, path in ((m, "/"), (m, "/jobs/daves/logs/0?raw=1"), (m, "/metrics"), (b, "/metrics")):
        code, (body, _) = _https(addr, path, None)
        assert code == 401, (addr, path, code)
        assert b"secret-output" not in body
    # plaintext HTTP on an HTTPS port gets nothing
    host, port = m.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        try:
            got = s.recv(65536)
        except ConnectionResetError:
            got = b""
        assert b"borg_" not in got
    # a reader sees pages and metrics, not logs; a Prometheus-style reader scrapes Borglets
    rita = TlsDir.load(cell.cert("reader", "rita"))
    assert _https(m, "/", rita)[0] == 200
    assert _https(m, "/metrics", rita)[0] == 200
    assert _https(b, "/metrics", rita)[0] == 200
    assert _https(m, "/jobs/daves/logs/0?raw=1", rita)[0] == 403


def test_ui_login_link_opens_a_session_for_its_holder(cell: Cell) -> None:
    global _any_dir
    _any_dir = cell.cert("admin", "admin")
    erin = cell.cert("user", "erin", hosts=())
    link = json.loads(as_(cell, erin, "ui", "-o", "json").stdout)["url"]
    assert link.startswith("https://")
    rest = link.split("://", 1)[1]
    addr, path = rest.split("/", 1)
    code, (_, headers) = _https(addr, "/" + path, None)
    assert code == 303
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "Secure" in headers["Set-Cookie"]
    # the session works on any replica (the key comes from the cell's shared secret)
    other = cell.masters[2].info["http"]
    assert _https(other, "/", None, cookie)[0] == 200
    assert _https(other, "/jobs/daves/logs/0?raw=1", None, cookie)[0] == 403
    # a forged or tampered cookie is nobody
    forged = cookie[:-3] + ("AAA" if not cookie.endswith("AAA") else "BBB")
    assert _https(other, "/", None, forged)[0] == 401
    assert _https(addr, "/login?token=forged.token", None)[0] == 403


# ----- audit -----------------------------------------------------------------------------


def test_audit_log_records_every_write_with_identity_and_result(cell: Cell, tmp_path: Path) -> None:
    frank = person(cell, "user", "frank")
    assert up(cell, frank, tmp_path, "franks").returncode == 0
    assert as_(cell, person(cell, "user", "bob"), "down", "franks").returncode == 1
    assert as_(cell, person(cell, "reader", "rita"), "down", "franks").returncode == 1
    assert as_(cell, frank, "down", "franks").returncode == 0

    def records() -> list[dict[str, Any]]:
        out = []
        for i in range(len(cell.masters)):
            p = cell.audit_log(i)
            if os.path.exists(p):
                out += [json.loads(line) for line in Path(p).read_text().splitlines()]
        return [r for r in out if r["target"] == "franks"]

    def complete() -> list[dict[str, Any]] | None:
        rs = records()
        return rs if len(rs) >= 4 else None

    rs = wait_for(complete, 10, what="audit records")
    by = {(r["identity"], r["method"], r["result"].split(":")[0]) for r in rs}
    assert ("frank", "SubmitJob", "ok") in by
    assert ("bob", "KillJob", "PERMISSION_DENIED") in by
    assert ("rita", "KillJob", "PERMISSION_DENIED") in by
    assert ("frank", "KillJob", "ok") in by
    for r in rs:
        assert set(r) >= {"ts", "identity", "role", "method", "target", "request_id", "result"}
        assert r["role"] in ("user", "reader")
    submit = next(r for r in rs if r["method"] == "SubmitJob")
    assert len(submit["request_id"]) >= 16
    assert oct(os.stat(cell.audit_log(0)).st_mode & 0o777) == "0o600"


# ----- a real Prometheus with its own certificate -----------------------------------------

NO_PROMETHEUS = "prometheus not installed (Debian: apt-get install prometheus)"


@pytest.mark.skipif(shutil.which("prometheus") is None, reason=NO_PROMETHEUS)
def test_prometheus_scrapes_the_tls_cell_with_the_shipped_config(cell: Cell) -> None:
    """docs/prometheus/prometheus-tls.yml with a reader certificate scrapes every component."""
    shipped = yaml.safe_load((Path(REPO) / "docs/prometheus/prometheus-tls.yml").read_text())
    reader = cell.cert("reader", "prometheus", hosts=())
    work = tempfile.mkdtemp(prefix="borgcell-prom-tls-")
    targets = {
        "borgmaster": [m.info["http"] for m in cell.masters],
        "borglet": [b.info["http"] for b in cell.borglets],
    }
    for sc in shipped["scrape_configs"]:
        tls = sc["tls_config"]
        for k in ("ca_file", "cert_file", "key_file"):
            tls[k] = os.path.join(reader, os.path.basename(tls[k]))
        sc["static_configs"] = [{"targets": targets[sc["job_name"]]}]
    shipped.pop("rule_files", None)
    shipped["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s"}
    with open(os.path.join(work, "prometheus.yml"), "w") as f:
        yaml.safe_dump(shipped, f)
    addr = f"127.0.0.1:{free_port()}"
    proc = Proc(
        "prometheus",
        [
            str(shutil.which("prometheus")),
            f"--config.file={work}/prometheus.yml",
            f"--storage.tsdb.path={work}/data",
            f"--web.listen-address={addr}",
            "--log.level=warn",
        ],
        os.path.join(work, "prometheus.log"),
    )
    proc.start()
    try:
        want = {a for ts in targets.values() for a in ts}

        def all_up() -> bool:
            if not proc.alive():
                raise RuntimeError(f"prometheus exited:\n{proc.log()[-3000:]}")
            url = f"http://{addr}/api/v1/query?" + urllib.parse.urlencode({"query": "up"})
            with urllib.request.urlopen(url, timeout=5) as r:
                res = json.loads(r.read())["data"]["result"]
            return {x["metric"]["instance"] for x in res if x["value"][1] == "1"} == want

        wait_for(all_up, 30, interval=0.2, what="up == 1 for every TLS target")
    finally:
        proc.stop(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def test_only_a_master_may_say_whom_it_relays_for(cell: Cell, tmp_path: Path) -> None:
    """The relay header a follower sets for the leader is ignored from anyone else."""
    alice = TlsDir.load(cell.cert("user", "alice", hosts=()))
    addr = cell.leader().info["grpc"]
    with secure_channel(addr, alice) as ch:
        stub = borg_pb2_grpc.BorgmasterStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.SetQuota(
                pb.SetQuotaRequest(quota=pb.Quota(user="alice", band="production")),
                metadata=(("borg-on-behalf-of", "admin/admin"),),
                timeout=5,
            )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "alice (user) may not set quotas" in (e.value.details() or "")
    assert all(q["user"] != "alice" or q["band"] != "production" for q in _quotas(cell))


def _quotas(cell: Cell) -> list[dict[str, Any]]:
    return list(cell.borgcfg_json("quota", "list"))
