"""Backup and restore with real processes (SPEC part 2, "Operating the cell"): `borgcfg
snapshot save` on a 3-master TLS cell, `borgmaster restore` into three fresh data dirs, and a
new 3-master cell started on them where the old one served (a disaster recovery: the masters'
disks are gone, the Borglet and its task are not).

Checked: jobs (with their version), quotas and events are back; the Borglet re-registers
and its running task is re-adopted (same pids, no restart, never a second copy); the new
cell's leader schedules (its fence term starts again); a replica added later with
`cell add` holds the restored state (sent the dump, not a replay from index 1); a user gets
permission denied; corrupt and foreign files and a non-empty dir are refused with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import (
    REPO,
    Cell,
    Proc,
    add_master_with_args,
    free_port,
    task_index_copies,
    wait_for,
)
from tests.conftest import cgroups_usable
from tests.integration.test_borglet_lifecycle import task_pids

pytestmark = [pytest.mark.e2e]

LOOP = json.dumps(["python3", "-c", "import time\nwhile True: time.sleep(0.2)"])
JOB = """\
name: web
kind: service
run_as: nobody
replicas: 1
command: {command}
env:
  COLOR: {color}
requirements:
  cpu: 0.05
  ram: 32Mi
"""


@pytest.fixture(scope="module")
def cell() -> Iterator[Cell]:
    why = cgroups_usable()
    if why:
        pytest.skip(why)
    c = Cell(tls=True, audit=True)
    try:
        c.start(masters=3, borglets=1)
    except Exception:
        print(c.dump_logs())
        c.close()
        raise
    try:
        yield c
    except Exception:
        print(c.dump_logs())
        raise
    finally:
        c.close()


def ok(cell: Cell, *args: str, **kw: Any) -> str:
    r = cell.borgcfg(*args, **kw)
    assert r.returncode == 0, f"borgcfg {' '.join(args)}: {r.stderr}"
    return r.stdout


def restore(snapshot: str, data_dir: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "borgmaster.cli", "restore"]
    argv += ["--snapshot", snapshot, "--data-dir", data_dir]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)


def connected(cell: Cell) -> bool:
    metrics = cell.http_get(cell.borglets[0].info["http"], "/metrics")[1]
    return "borg_borglet_connected 1.0" in metrics


def web_task(cell: Cell) -> dict[str, Any]:
    return dict(cell.job("web")["tasks"][0])


def steady(job: dict[str, Any]) -> dict[str, Any]:
    """A job's status without the measured usage (which moves on its own)."""
    tasks = [
        {k: v for k, v in t.items() if k not in ("cpu_seconds", "memory_bytes")}
        for t in job["tasks"]
    ]
    return {**job, "tasks": tasks}


def test_snapshot_restore_into_a_new_three_master_cell(cell: Cell, tmp_path: Path) -> None:
    cfg = tmp_path / "web.yaml"
    cfg.write_text(JOB.format(command=LOOP, color="blue"))
    ok(cell, "up", str(cfg), "--wait", "--timeout", "60")
    cfg.write_text(JOB.format(command=LOOP, color="green"))  # version 2, rolled out
    ok(cell, "up", str(cfg), "--wait", "--timeout", "60")
    ok(cell, "quota", "set", "alice", "production", "cpu=3", "ram=4Gi")
    before = cell.job("web")
    assert before["version"] == 2
    task = web_task(cell)
    assert task["state"] == "running"
    pids = wait_for(lambda: task_pids(cell, "web"), 10, what="web's pids")
    events_before = [json.loads(line) for line in ok(cell, "events", "-o", "json").splitlines()]

    # A user may not copy the cell's state (it holds every job's environment).
    alice = cell.cert("user", "alice", hosts=())
    r = cell.borgcfg("snapshot", "save", str(tmp_path / "denied.snap"), tls_dir=alice)
    assert r.returncode == 1 and "permission denied" in r.stderr, r.stderr
    assert not (tmp_path / "denied.snap").exists()

    snap = str(tmp_path / "cell.snap")
    saved = json.loads(ok(cell, "snapshot", "save", snap, "-o", "json"))
    assert saved["index"] > 0 and saved["term"] > 0 and saved["bytes"] == os.path.getsize(snap)
    assert os.stat(snap).st_mode & 0o777 == 0o600
    audit = "".join(
        Path(cell.audit_log(i)).read_text() for i in range(3) if os.path.exists(cell.audit_log(i))
    )
    records = [json.loads(x) for x in audit.splitlines() if "SaveSnapshot" in x]
    assert {(r["identity"], r["result"][:17]) for r in records} == {
        ("admin", "ok"),
        ("alice", "PERMISSION_DENIED"),
    }, records

    # Refusals: one line, exit 1, nothing written.
    foreign = tmp_path / "foreign.snap"
    foreign.write_bytes(b"PK\x03\x04 not a snapshot" * 10)
    corrupt = tmp_path / "corrupt.snap"
    data = bytearray(Path(snap).read_bytes())
    data[len(data) // 2] ^= 0x01
    corrupt.write_bytes(bytes(data))
    nonempty = tmp_path / "used"
    nonempty.mkdir()
    (nonempty / "raft.journal").write_bytes(b"x")
    for path, target, why in [
        (str(foreign), tmp_path / "r-foreign", "not a borgcell snapshot"),
        (str(corrupt), tmp_path / "r-corrupt", "corrupt"),
        (snap, nonempty, "not empty"),
    ]:
        r = restore(path, str(target))
        assert r.returncode == 1, (path, r.stdout, r.stderr)
        assert why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
        assert not target.exists() or os.listdir(target) == (["raft.journal"])

    # The disaster: every master and its data dir is gone; the Borglet and its task are not.
    mark = len(cell.borglets[0].log())
    old = list(cell.masters)
    for m in old:
        m.stop()
    wait_for(lambda: not connected(cell), 20, what="borglet disconnected")
    dirs = [os.path.join(cell.base, f"m{i}") for i in (10, 11, 12)]
    for d in dirs:
        r = restore(snap, d)
        assert r.returncode == 0, r.stderr
        assert f"index {saved['index']}" in r.stdout
    # A new cell on the restored dirs, where the old one served (the Borglet knows those
    # addresses), with new replica ids: any --id/--raft/--peer may start on a restored dir.
    rafts = [m.info["raft"] for m in old]
    cell.masters = []
    for i, m in enumerate(old):
        add_master_with_args(
            cell,
            10 + i,
            rafts[i],
            [r for r in rafts if r != rafts[i]],
            grpc_addr=m.info["grpc"],
            http_addr=m.info["http"],
        )
    cell.wait_ready()

    assert steady(cell.job("web")) == steady(before)
    quotas = json.loads(ok(cell, "quota", "list", "-o", "json"))
    assert [(q["user"], q["band"], q["limit"]["cpu"]) for q in quotas] == [
        ("alice", "production", 3.0)
    ]
    events = [json.loads(line) for line in ok(cell, "events", "-o", "json").splitlines()]
    assert events[: len(events_before)] == events_before
    assert any(e["type"] == "restored" for e in events[len(events_before) :])

    # The Borglet re-registers with the new cell, which re-adopts its task by incarnation.
    wait_for(lambda: connected(cell), 30, what="borglet connected to the new cell")
    wait_for(lambda: steady(cell.job("web")) == steady(before), 30, what="web still running")
    assert web_task(cell)["restarts"] == 0
    assert task_pids(cell, "web") == pids
    assert "web/0 started" not in cell.borglets[0].log()[mark:]
    assert task_index_copies("web") == {"0": 1}

    # The new cell decides: a new job is scheduled (a leftover fence term would void every
    # plan of the new leaders, whose terms start at 1 again).
    (tmp_path / "more.yaml").write_text(
        JOB.replace("name: web", "name: more").format(command=LOOP, color="red")
    )
    ok(cell, "up", str(tmp_path / "more.yaml"), "--wait", "--timeout", "60")
    assert task_pids(cell, "web") == pids and task_index_copies("web") == {"0": 1}
    assert "web/0 started" not in cell.borglets[0].log()[mark:]

    # A replica added later gets the restored state (PySyncObj sends it the leader's dump).
    joiner = add_master_with_args(cell, 13, f"127.0.0.1:{free_port()}", rafts, extra=["--join"])
    wait_for(lambda: joiner.alive() and joiner_serves(cell, joiner), 30, what="joiner serving")
    ok(cell, "cell", "add", joiner.info["raft"])
    got = wait_for(
        lambda: stale_job(cell, joiner, "more") and stale_job(cell, joiner, "web"),
        30,
        what="the joiner holds the restored state",
    )
    assert got["version"] == 2

    # A restored replica restarted before its first log compaction starts from the restored
    # dump again, with its own --peer list, and catches up.
    leader = cell.leader()
    follower = next(m for m in cell.masters[:3] if m is not leader)
    assert follower.stop() == 0
    again = Proc(follower.name, follower.argv, follower.log_path, info=dict(follower.info))
    again.start()
    cell.masters[cell.masters.index(follower)] = again
    cell.wait_ready()
    web = stale_job(cell, again, "web")
    assert stale_job(cell, again, "more") and web and steady(web) == steady(got)
    ok(cell, "down", "web", "--wait", "--timeout", "30")
    ok(cell, "down", "more", "--wait", "--timeout", "30")


def joiner_serves(cell: Cell, p: Proc) -> bool:
    return cell.http_get(p.info["http"], "/healthz")[0] == 200


def stale_job(cell: Cell, p: Proc, name: str) -> dict[str, Any] | None:
    r = cell.borgcfg("status", name, "--stale", "-o", "json", master=p.info["grpc"])
    return dict(json.loads(r.stdout)) if r.returncode == 0 else None
