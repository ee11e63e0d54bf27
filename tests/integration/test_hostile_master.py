"""Hostile tasks against the master and the machine's private state, as real tasks in a real
cell: a job author must not reach root through Raft, the master's data, the Borglet's state
or the `run_as` field.

The cell: one master (no peers, so it makes its own Raft secret, as the dev cell does) and one
Borglet that lets tasks run as `nobody` (its default) and `daemon` (`--task-users daemon`).
A "victim" job runs as `daemon` with a secret in its environment; attackers run as `nobody`.
Each attack prints what it got; the tests assert that no secret and no side effect shows.
The task-file attacks (log links, FIFOs, sandboxes) are in test_hostile_files.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import Cell, free_port, wait_for
from tests.conftest import real_cell

pytestmark = [pytest.mark.e2e]

SECRET = "victim-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    def add_borglet(c: Cell) -> None:
        c.add_borglet(cpu=4, memory="4Gi", extra=["--task-users", "daemon"])
        c.wait_machines(1)

    yield from real_cell(add_borglet, masters=1, borglets=0)


def submit(cell: Cell, tmp_path: Path, job: dict[str, Any], *args: str) -> Any:
    """`borgcfg up` of one job given as a dict (JSON config); returns the process result."""
    path = tmp_path / f"{job['name']}-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(job))
    return cell.borgcfg("up", str(path), *args)


def batch(name: str, script: str, run_as: str = "nobody", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "batch",
        "run_as": run_as,
        "requirements": {"cpu": 0.1, "ram": "64Mi"},
        "command": ["python3", "-c", script],
        **extra,
    }


def finished_output(cell: Cell, job: str, timeout: float = 40) -> str:
    """The task's stdout once it has succeeded (the attack scripts always exit 0)."""

    def done() -> dict[str, Any] | None:
        t = cell.job(job)["tasks"][0]
        return t if t["state"] in ("succeeded", "failed") else None

    t = wait_for(done, timeout, what=f"{job}/0 finished")
    out = cell.borgcfg("logs", f"{job}/0").stdout
    assert t["state"] == "succeeded", (t, out, cell.borgcfg("logs", f"{job}/0", "--stderr").stdout)
    return out


@pytest.fixture(scope="module")
def victim(cell: Cell, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A service running as `daemon` with SECRET in its environment; returns the job name."""
    tmp = tmp_path_factory.mktemp("victim")
    job = {
        "name": "victim",
        "run_as": "daemon",
        "env": {"VICTIM_SECRET": SECRET},
        "requirements": {"cpu": 0.05, "ram": "32Mi"},
        "command": ["sh", "-c", "echo uid=$(id -u); exec sleep 100000"],
    }
    r = submit(cell, tmp, job, "--wait", "--timeout", "40")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "uid=1" in cell.borgcfg("logs", "victim/0").stdout, 20, what="victim running")
    return "victim"


# ----- Raft: no code from the network, no unbounded buffers ----------------------------------


PICKLE_ATTACK = """
import os, pickle, socket, struct, zlib
class Boom:
    def __reduce__(self):
        return (os.system, ("touch MARKER",))
data = zlib.compress(pickle.dumps(Boom()))
s = socket.create_connection(("HOST", PORT), timeout=10)
s.sendall(struct.pack("i", len(data)) + data)
try:
    got = s.recv(100)
except OSError as e:
    got = repr(e).encode()
print("answered", got[:40], flush=True)
"""


def test_a_pickle_sent_by_a_task_to_the_raft_port_runs_nothing(cell: Cell, tmp_path: Path) -> None:
    """The issue's attack: a task sends PySyncObj a pickle that would run a command as root
    in the master. With the Raft secret the frame fails authentication and is dropped."""
    marker = os.path.join(cell.base, f"pwned-{uuid.uuid4().hex}")
    host, port = cell.masters[0].info["raft"].rsplit(":", 1)
    script = PICKLE_ATTACK.replace("MARKER", marker).replace("HOST", host).replace("PORT", port)
    r = submit(cell, tmp_path, batch("pickler", script))
    assert r.returncode == 0, r.stderr
    out = finished_output(cell, "pickler", 60)
    assert "answered" in out, out
    assert not os.path.exists(marker), "the master unpickled a stranger's frame"
    assert cell.http_get(cell.masters[0].info["http"], "/healthz")[0] == 200


FLOOD_ATTACK = """
import socket, struct
s = socket.create_connection(("HOST", PORT), timeout=10)
s.sendall(struct.pack("i", 2_000_000_000))
chunk = b"x" * 65536
sent = 0
try:
    while sent < 64 << 20:
        s.sendall(chunk)
        sent += len(chunk)
    print("all sent", sent, flush=True)
except OSError as e:
    print("dropped after", sent, type(e).__name__, flush=True)
"""


def test_a_huge_frame_from_a_stranger_is_dropped_before_it_is_buffered(
    cell: Cell, tmp_path: Path
) -> None:
    """A frame announcing 2 GB: the master drops the connection instead of buffering what
    arrives (PySyncObj alone would hold all 64 MiB the task sends, and more if it sent it)."""
    master = psutil.Process(cell.masters[0].popen.pid)  # type: ignore[union-attr]
    rss_before = master.memory_info().rss
    host, port = cell.masters[0].info["raft"].rsplit(":", 1)
    script = FLOOD_ATTACK.replace("HOST", host).replace("PORT", port)
    r = submit(cell, tmp_path, batch("flooder", script))
    assert r.returncode == 0, r.stderr
    out = finished_output(cell, "flooder", 60)
    assert "dropped after" in out, out
    assert master.memory_info().rss < rss_before + (32 << 20)
    assert cell.http_get(cell.masters[0].info["http"], "/readyz")[0] == 200


def test_master_and_borglet_state_is_private(cell: Cell) -> None:
    """Data dirs 0700 (the Borglet's 0711, to reach sandboxes), their files 0600, and the
    single replica's generated Raft secret among them."""
    data = cell.masters[0].info["data"]
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    names = set(os.listdir(data))
    assert {"raft-secret", "raft.journal", "borgcell.id"} <= names, names
    for name in names:
        mode = stat.S_IMODE(os.lstat(os.path.join(data, name)).st_mode)
        assert mode & 0o077 == 0, f"{name} is {oct(mode)}"
    assert len(Path(data, "raft-secret").read_text().strip()) >= 32
    bdata = cell.borglets[0].info["data"]
    assert stat.S_IMODE(os.stat(bdata).st_mode) == 0o711
    assert stat.S_IMODE(os.stat(os.path.join(bdata, "run")).st_mode) == 0o700
    state = os.path.join(bdata, "state.json")
    wait_for(lambda: os.path.exists(state), 10, what="state file")
    assert stat.S_IMODE(os.stat(state).st_mode) & 0o077 == 0


SNOOP_ATTACK = """
import glob, os
targets = glob.glob("MDATA/*") + ["MDATA/raft.journal", "BDATA/state.json"]
targets += glob.glob("BDATA/run/*/spec") + ["BDATA/run"]
targets += glob.glob("/proc/[0-9]*/environ")
leaked = []
for path in targets:
    try:
        if os.path.isdir(path):
            data = " ".join(os.listdir(path)).encode()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError:
        continue
    if b"SECRET_PREFIX" in data:
        leaked.append(path)
print("checked", len(targets), "leaked", leaked, flush=True)
"""


def test_a_task_cannot_read_other_jobs_env_from_master_or_machine_state(
    cell: Cell, victim: str, tmp_path: Path
) -> None:
    """The journal holds every job's env, the Borglet's state and the shim's spec files hold
    those of its tasks, /proc holds those of running processes: a task of another account
    reads none of them."""
    script = (
        SNOOP_ATTACK.replace("MDATA", cell.masters[0].info["data"])
        .replace("BDATA", cell.borglets[0].info["data"])
        .replace("SECRET_PREFIX", SECRET)
    )
    r = submit(cell, tmp_path, batch("snoop", script))
    assert r.returncode == 0, r.stderr
    out = finished_output(cell, "snoop")
    assert "leaked []" in out, out
    assert SECRET not in out


# ----- run_as: only the accounts the machine allows, never root-equivalent ones -------------


def test_run_as_an_account_no_machine_allows_is_refused_at_submission(
    cell: Cell, tmp_path: Path
) -> None:
    for account in ("root", "bin", "daemonx"):
        r = submit(cell, tmp_path, batch("asbad", "print('ran')", run_as=account))
        assert r.returncode == 1, (account, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "run_as" in lines[0] and f"'{account}'" in lines[0], lines
        assert "Traceback" not in r.stderr
    assert cell.borgcfg("status", "asbad").returncode == 1  # nothing was created


def test_run_as_an_allowed_second_account_runs_as_it(cell: Cell, victim: str) -> None:
    out = cell.borgcfg("logs", f"{victim}/0").stdout
    assert "uid=1" in out, out  # daemon, allowed by --task-users


def test_borglet_refuses_to_start_with_a_privileged_task_account(cell: Cell) -> None:
    base = cell.base
    for flags in (["--task-user", "root"], ["--task-users", "nobody,root"]):
        argv = list(cell.borglets[0].argv)
        argv[argv.index("--data-dir") + 1] = os.path.join(base, f"refused-{uuid.uuid4().hex}")
        argv[argv.index("--grpc") + 1] = f"127.0.0.1:{free_port()}"
        argv[argv.index("--http") + 1] = f"127.0.0.1:{free_port()}"
        argv[argv.index("--name") + 1] = "refused"
        i = argv.index("--task-users")
        del argv[i : i + 2]
        argv += flags
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (flags, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "root" in lines[0] and "privileged" in lines[0], lines


def test_a_task_placed_where_its_account_is_refused_fails_and_never_runs(
    tmp_path: Path,
) -> None:
    """Submitted before any machine said what it allows, then placed on a Borglet that does
    not allow the account: the task fails with a `run_as:` reason and nothing ran."""
    gen = real_cell(masters=1, borglets=0)
    c = next(gen)
    try:
        marker = os.path.join(c.base, "ran")
        script = f"open({marker!r}, 'w').write('ran')"
        r = submit(c, tmp_path, batch("early", script, run_as="daemon"))
        assert r.returncode == 0, r.stderr
        c.add_borglet(cpu=2, memory="2Gi")

        def failed() -> dict[str, Any] | None:
            t = c.job("early")["tasks"][0]
            return t if t["state"] == "failed" else None

        t = wait_for(failed, 30, what="early/0 failed")
        assert t["reason"].startswith("run_as: account 'daemon' is not allowed"), t
        assert not os.path.exists(marker)
    finally:
        gen.close()


# ----- the Borglet's log port ----------------------------------------------------------------


RELAY = """
import os, socket, threading
port = int(os.environ["BORG_PORT_RELAY"])
target = ("BHOST", BPORT)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen()
print("relaying", port, flush=True)
def pump(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
while True:
    conn, _ = srv.accept()
    up = socket.create_connection(target)
    threading.Thread(target=pump, args=(conn, up), daemon=True).start()
    threading.Thread(target=pump, args=(up, conn), daemon=True).start()
"""


def read_logs(addr: str, job: str) -> tuple[grpc.StatusCode, bytes]:
    """A raw ReadLogs call: its status code and what it returned."""
    with grpc.insecure_channel(addr) as ch:
        stub = borg_pb2_grpc.BorgletStub(ch)
        try:
            chunks = stub.ReadLogs(pb.ReadLogsRequest(job=job, index=0), timeout=10)
            return grpc.StatusCode.OK, b"".join(c.data for c in chunks)
        except grpc.RpcError as e:
            return e.code(), (e.details() or "").encode()


def test_a_task_cannot_read_other_jobs_logs_from_its_borglet(
    cell: Cell, victim: str, tmp_path: Path
) -> None:
    """A task relays a connection to the Borglet's gRPC port (as any task could call it
    itself): the Borglet sees a socket of a task account and refuses; the same call from
    another account of the machine (here root, as an operator's borgcfg) is served."""
    bhost, bport = cell.borglets[0].info["grpc"].rsplit(":", 1)
    job = {
        "name": "relay",
        "run_as": "nobody",
        "requirements": {"cpu": 0.05, "ram": "32Mi", "ports": ["relay"]},
        "command": ["python3", "-c", RELAY.replace("BHOST", bhost).replace("BPORT", bport)],
    }
    r = submit(cell, tmp_path, job, "--wait", "--timeout", "40")
    assert r.returncode == 0, r.stderr
    out = wait_for(
        lambda: "relaying" in (o := cell.borgcfg("logs", "relay/0").stdout) and o,
        20,
        what="relay listening",
    )
    port = int(out.split("relaying", 1)[1].split()[0])
    code, data = read_logs(f"127.0.0.1:{port}", victim)
    assert code == grpc.StatusCode.PERMISSION_DENIED, (code, data)
    assert b"uid=" not in data
    code, data = read_logs(cell.borglets[0].info["grpc"], victim)
    assert code == grpc.StatusCode.OK and b"uid=1" in data, (code, data)
    assert cell.borgcfg("down", "relay").returncode == 0
