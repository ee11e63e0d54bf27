"""Hostile tasks against the files the root Borglet handles for them (issue 12, SPEC part 2
"Security by default": tasks never reach root).

A task owns its sandbox and may put anything there at any time: links to root's files, hard
links, FIFOs, directories in place of its logs or of the names log rotation uses. Each test
runs such a task for real (run_as nobody, in a real cell) and checks that neither
`borgcfg logs` (plain, --stderr, -f), the master's web UI log pages nor log rotation ever
read or write what the task pointed at, that nothing blocks, and that sandboxes and the
Borglet's state file are private. Raw ReadLogs calls check argument validation; two
machine-free tests cover sandbox clean-up and the HTTP health probe's bounds.

The cell runs as root (CI does too); a second unprivileged account sharing nobody's group is
created once (`useradd`), idempotently, for the cross-account test.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from borglet.agent import MAX_FOLLOWERS, SANDBOX_RETENTION_S, Borglet
from borglet.health import probe_http
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import Cell, wait_for
from tests.conftest import real_cell
from tests.integration.test_borglet_lifecycle import (
    BORGLET_FLAGS,
    down,
    sandbox,
    task_where,
    up,
)

PEER = "borgcell-peer"
"""A second task account whose primary group is nobody's (nogroup): a group-readable sandbox
would be open to it."""
NOGROUP = 65534


def ensure_peer_account() -> None:
    """Create PEER (system account, no home, no shell, primary group nogroup) once."""
    try:
        pwd.getpwnam(PEER)
        return
    except KeyError:
        pass
    argv = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    r = subprocess.run([*argv, "--gid", str(NOGROUP), PEER], capture_output=True, text=True)
    if r.returncode not in (0, 9):  # 9: created meanwhile by a concurrent run
        pytest.skip(f"cannot create test account {PEER}: {r.stderr.strip()}")


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    def add_borglet(c: Cell) -> None:
        ensure_peer_account()
        c.add_borglet(cpu=4, memory="4Gi", extra=[*BORGLET_FLAGS, "--task-users", f"nobody,{PEER}"])
        c.wait_machines(1)

    yield from real_cell(add_borglet, masters=1, borglets=0)


@pytest.fixture
def secret(cell: Cell) -> Iterator[tuple[str, str]]:
    """A root-only file (0600) with a unique string, on the data dir's file system (so a hard
    link to it can be made). Yields (path, secret text)."""
    text = f"ROOT-SECRET-{uuid.uuid4().hex}"
    path = os.path.join(cell.base, f"secret-{uuid.uuid4().hex[:8]}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (text + "\n").encode())
    os.close(fd)
    yield path, text
    os.unlink(path)


def logs(cell: Cell, ref: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`borgcfg logs REF ARGS` that must come back on its own (a hang is a failure)."""
    return cell.borgcfg("logs", ref, *args, timeout=20)


def ui_logs(cell: Cell, job: str, query: str) -> tuple[int, str]:
    return cell.http_get(cell.masters[0].info["http"], f"/jobs/{job}/logs/0{query}")


def assert_refused(r: subprocess.CompletedProcess[str], text: str, why: str) -> None:
    assert text not in r.stdout + r.stderr
    assert r.returncode != 0, r.stdout[:200]
    assert why in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one clear line


def file_state(path: str) -> tuple[bytes, int, int, int, int, float]:
    st = os.lstat(path)
    return Path(path).read_bytes(), st.st_mode, st.st_uid, st.st_nlink, st.st_ino, st.st_mtime


# ----- reading logs ------------------------------------------------------------------------


def test_logs_linked_to_a_root_file_are_never_served(
    cell: Cell, tmp_path: Path, secret: tuple[str, str]
) -> None:
    path, text = secret
    up(
        cell,
        tmp_path,
        "lnk",
        "requirements: {cpu: 0.05, ram: 16Mi}\n"
        f"command: 'echo out; echo err >&2; rm -f stdout stderr; ln -s {path} stdout;"
        f" ln -s {path} stderr; sleep 1000'\n",
    )
    sb = wait_for(lambda: sandbox(cell, "lnk"), 20, what="sandbox")
    wait_for(
        lambda: (
            os.path.islink(os.path.join(sb, "stdout"))
            and os.path.islink(os.path.join(sb, "stderr"))
        ),
        20,
        what="planted links",
    )
    for args in ([], ["--stderr"], ["-f"], ["--stderr", "-f"]):
        assert_refused(logs(cell, "lnk/0", *args), text, "not served")
    for query in ("?raw=1", "?stderr=1&raw=1", "", "?stderr=1"):
        code, body = ui_logs(cell, "lnk", query)
        assert text not in body
        assert "not served" in body
        if "raw" in query:
            assert code == 502
    down(cell, "lnk")


def test_hard_links_and_files_of_other_accounts_are_never_served(
    cell: Cell, tmp_path: Path, secret: tuple[str, str]
) -> None:
    """A task cannot hard-link root's files where fs.protected_hardlinks is on (the default),
    so the test plants them as root, as a task could on a host where it is off; a root-owned
    single-link file stands for one moved in from elsewhere."""
    path, text = secret
    up(
        cell,
        tmp_path,
        "hard",
        "requirements: {cpu: 0.05, ram: 16Mi}\n"
        f"command: 'rm -f stdout stderr; ln {path} stdout 2>/dev/null; touch ready; sleep 1000'\n",
    )
    sb = wait_for(lambda: sandbox(cell, "hard"), 20, what="sandbox")
    wait_for(lambda: os.path.exists(os.path.join(sb, "ready")), 20, what="task ready")
    out = os.path.join(sb, "stdout")
    if not os.path.exists(out):
        os.link(path, out)
    assert os.stat(out).st_nlink == 2
    fd = os.open(os.path.join(sb, "stderr"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    assert_refused(logs(cell, "hard/0"), text, "hard link")
    assert_refused(logs(cell, "hard/0", "--stderr"), text, "owned by uid 0")
    code, body = ui_logs(cell, "hard", "?raw=1")
    assert code == 502 and text not in body
    down(cell, "hard")


def test_fifo_or_directory_in_place_of_a_log_never_blocks(cell: Cell, tmp_path: Path) -> None:
    """Readers return at once with a clear error; the restarted task gets fresh log files
    (the shim's open of a FIFO would otherwise block the restart forever)."""
    up(
        cell,
        tmp_path,
        "fifo",
        "requirements: {cpu: 0.05, ram: 16Mi}\nrestart: {backoff: 100ms}\n"
        "command: 'if [ -e ran ]; then echo second-run; sleep 1000; fi; touch ran;"
        " rm -f stdout stderr; mkfifo stdout; mkdir stderr;"
        " while [ ! -e go ]; do sleep 0.05; done; rmdir stderr; exit 3'\n",
    )
    sb = wait_for(lambda: sandbox(cell, "fifo"), 20, what="sandbox")
    wait_for(
        lambda: (
            stat.S_ISFIFO(os.lstat(os.path.join(sb, "stdout")).st_mode)
            and os.path.isdir(os.path.join(sb, "stderr"))
        ),
        20,
        what="planted FIFO and directory",
    )
    for args, why in (([], "not a regular file"), (["-f"], "not a regular file")):
        t0 = time.monotonic()
        assert_refused(logs(cell, "fifo/0", *args), "\0", why)
        assert time.monotonic() - t0 < 10
    assert_refused(logs(cell, "fifo/0", "--stderr"), "\0", "not a regular file")
    Path(sb, "go").touch()
    task_where(
        cell, "fifo", lambda t: t["restarts"] >= 1 and t["state"] == "running", 20, "restarted"
    )
    wait_for(lambda: "second-run" in logs(cell, "fifo/0").stdout, 20, what="second run's log")
    st = os.lstat(os.path.join(sb, "stdout"))
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 65534
    down(cell, "fifo")


# ----- writing logs ------------------------------------------------------------------------


def test_rotation_never_follows_planted_links_and_survives_a_blocked_name(
    cell: Cell, tmp_path: Path, secret: tuple[str, str]
) -> None:
    """Links at every name rotation uses, a directory at the oldest one; then a flood forces
    rotations (--log-max-size 256K, --log-keep 2). Root's file is untouched, the sandbox
    keeps the task's own regular files, and output written after the flood is still logged."""
    path, _ = secret
    before = file_state(path)
    up(
        cell,
        tmp_path,
        "rot",
        "requirements: {cpu: 0.5, ram: 16Mi}\n"
        f"command: 'mkdir stdout.2; for n in stdout.1 stdout.new .stdout.new; do ln -s {path}"
        ' $n; done; head -c 3000000 /dev/zero | tr "\\\\0" x; echo; echo after-flood-mark;'
        " sleep 1000'\n",
    )
    sb = wait_for(lambda: sandbox(cell, "rot"), 20, what="sandbox")
    wait_for(
        lambda: "after-flood-mark" in logs(cell, "rot/0").stdout, 30, what="output after flood"
    )
    assert file_state(path) == before
    assert os.path.isdir(os.path.join(sb, "stdout.2"))
    for name in ("stdout", "stdout.1"):
        st = os.lstat(os.path.join(sb, name))
        assert stat.S_ISREG(st.st_mode) and st.st_uid == 65534 and st.st_nlink == 1, name
    down(cell, "rot")


# ----- who can reach a sandbox -------------------------------------------------------------


def test_sandboxes_and_state_file_are_private_to_their_account(cell: Cell, tmp_path: Path) -> None:
    up(
        cell,
        tmp_path,
        "mine",
        "requirements: {cpu: 0.05, ram: 16Mi}\n"
        "command: 'echo private-file > f; echo private-log; sleep 1000'\n",
    )
    sb = wait_for(lambda: sandbox(cell, "mine"), 20, what="sandbox")
    wait_for(lambda: os.path.exists(os.path.join(sb, "f")), 20, what="task file")
    st = os.stat(sb)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 65534, NOGROUP)
    data = cell.borglets[0].info["data"]
    assert stat.S_IMODE(os.stat(os.path.join(data, "tasks")).st_mode) == 0o711
    state = os.path.join(data, "state.json")
    wait_for(lambda: os.path.exists(state), 10, what="state file")
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    # Another account, even one in the task's group, reaches neither files nor logs.
    p = tmp_path / "peer.yaml"
    p.write_text(
        f"name: peer\nrun_as: {PEER}\nkind: batch\nrestart: {{policy: never}}\n"
        f"requirements: {{cpu: 0.05, ram: 16Mi}}\nenv: {{SB: '{sb}'}}\n"
        "command: 'id -u; cat $SB/f && echo READ-FILE; cat $SB/stdout && echo READ-LOG;"
        " ls $SB && echo LISTED; cat $SB/../../state.json && echo READ-STATE; echo peer-done'\n"
    )
    r = cell.borgcfg("up", str(p))
    assert r.returncode == 0, r.stderr
    task_where(cell, "peer", lambda t: t["state"] in ("succeeded", "failed"), 30, "peer done")
    out = logs(cell, "peer/0").stdout
    assert "peer-done" in out and "private" not in out, out
    for leak in ("READ-FILE", "READ-LOG", "LISTED", "READ-STATE"):
        assert leak not in out, out
    down(cell, "peer")
    down(cell, "mine")


def test_exec_health_check_runs_in_the_task_cgroup_as_its_user(cell: Cell, tmp_path: Path) -> None:
    """A check is held to the task's limits: it runs in the task's cgroup, as its account."""
    up(
        cell,
        tmp_path,
        "hc",
        "requirements: {cpu: 0.05, ram: 32Mi}\ncommand: 'sleep 1000'\n"
        "health: {exec: ['sh', '-c', 'id -u > hc.tmp; cat /proc/self/cgroup >> hc.tmp;"
        " mv hc.tmp hc.out'], interval: 200ms, timeout: 5s, failure_threshold: 100}\n",
    )
    sb = wait_for(lambda: sandbox(cell, "hc"), 20, what="sandbox")
    out = wait_for(
        lambda: Path(sb, "hc.out").read_text() if Path(sb, "hc.out").exists() else "",
        20,
        what="health check output",
    )
    lines = out.splitlines()
    assert lines[0] == "65534"
    task_id = os.path.basename(sb)
    assert any(line.endswith(f"/{task_id}") for line in lines[1:]), out
    down(cell, "hc")


# ----- ReadLogs arguments ------------------------------------------------------------------


def test_read_logs_refuses_paths_in_its_arguments(
    cell: Cell, tmp_path: Path, secret: tuple[str, str]
) -> None:
    path, text = secret
    up(cell, tmp_path, "trav", "requirements: {cpu: 0.05, ram: 16Mi}\ncommand: 'sleep 1000'\n")
    sb = wait_for(lambda: sandbox(cell, "trav"), 20, what="sandbox")
    inc = os.path.basename(sb).split(".", 2)[2]
    # A directory outside data_dir/tasks with a root-only `stdout`: reachable on the old
    # code through an incarnation that climbs out of a real sandbox.
    outside = os.path.join(cell.base, f"outside-{uuid.uuid4().hex[:8]}")
    os.mkdir(outside, 0o700)
    shutil.copy(path, os.path.join(outside, "stdout"))
    rel = os.path.relpath(outside, sb)
    bad: list[dict[str, Any]] = [
        {"job": "trav", "index": 0, "incarnation": f"{inc}/{rel}"},
        {"job": "../../etc", "index": 0},
        {"job": "trav", "index": 0, "incarnation": "../x"},
        {"job": "trav", "index": -1},
        {"job": "trav", "index": 1 << 40},
        {"job": "trav", "index": 0, "tail_bytes": -5},
        {"job": "trav", "index": 0, "incarnation": "x" * 200},
    ]
    try:
        with grpc.insecure_channel(cell.borglets[0].info["grpc"]) as ch:
            stub = borg_pb2_grpc.BorgletStub(ch)
            for req in bad:
                with pytest.raises(grpc.RpcError) as e:
                    b"".join(c.data for c in stub.ReadLogs(pb.ReadLogsRequest(**req), timeout=5))
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
                assert text not in (e.value.details() or "")
            # The well-formed request still works.
            ok = stub.ReadLogs(pb.ReadLogsRequest(job="trav", index=0, incarnation=inc), timeout=5)
            assert b"".join(c.data for c in ok) == b""
    finally:
        shutil.rmtree(outside)
    down(cell, "trav")


def test_log_followers_are_capped_so_plain_reads_still_get_a_thread(
    cell: Cell, tmp_path: Path
) -> None:
    """Every `logs -f` holds a Borglet gRPC thread for as long as its client likes: past
    MAX_FOLLOWERS they are refused (RESOURCE_EXHAUSTED), and plain reads still answer."""
    up(
        cell,
        tmp_path,
        "tail",
        "requirements: {cpu: 0.05, ram: 16Mi}\ncommand: 'echo t; sleep 1000'\n",
    )
    wait_for(lambda: logs(cell, "tail/0").stdout == "t\n", 20, what="first line")
    with grpc.insecure_channel(cell.borglets[0].info["grpc"]) as ch:
        stub = borg_pb2_grpc.BorgletStub(ch)
        follow = pb.ReadLogsRequest(job="tail", index=0, follow=True)
        streams = [stub.ReadLogs(follow) for _ in range(MAX_FOLLOWERS)]
        try:
            for st in streams:
                assert next(st).data == b"t\n"  # each one is being served
            with pytest.raises(grpc.RpcError) as e:
                next(stub.ReadLogs(follow, timeout=5))
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            plain = stub.ReadLogs(pb.ReadLogsRequest(job="tail", index=0), timeout=5)
            assert b"".join(c.data for c in plain) == b"t\n"
        finally:
            for st in streams:
                st.cancel()
        # Cancelled streams give their slots back.
        again = wait_for(
            lambda: next(stub.ReadLogs(follow, timeout=2), None), 10, what="a follower slot"
        )
        assert again is not None and again.data == b"t\n"
    down(cell, "tail")


# ----- no cell needed ----------------------------------------------------------------------


def test_sandbox_gc_deletes_links_never_their_targets(tmp_path: Path) -> None:
    assert shutil.rmtree.avoids_symlink_attacks  # the fd-based walk remove_tree relies on
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep").write_text("keep")
    (outside / "sub" / "keep").write_text("keep")
    sb = tmp_path / "data" / "tasks" / "gone.0.abc"
    (sb / "nested").mkdir(parents=True)
    (sb / "dirlink").symlink_to(outside)
    (sb / "nested" / "filelink").symlink_to(outside / "keep")
    (sb / "nested" / "sublink").symlink_to(outside / "sub")
    (tmp_path / "data" / "tasks" / "linked.0.abc").symlink_to(outside)
    fake = SimpleNamespace(
        cfg=SimpleNamespace(data_dir=str(tmp_path / "data")),
        lock=threading.Lock(),
        states=SimpleNamespace(tasks={}),
        checkpoint=SimpleNamespace(refused=False),
    )
    assert Borglet.gc_sandboxes(fake, time.time() + 10 * SANDBOX_RETENTION_S) == 1  # type: ignore[arg-type]
    assert not sb.exists()
    assert (outside / "keep").read_text() == "keep"
    assert (outside / "sub" / "keep").read_text() == "keep"
    assert (tmp_path / "data" / "tasks" / "linked.0.abc").is_symlink()


def test_sandbox_gc_is_not_fooled_by_an_mtime_in_the_future(tmp_path: Path) -> None:
    """A task owns its sandbox and may `touch -d 2099` it; that must not keep it forever."""
    sb = tmp_path / "tasks" / "sticky.0.abc"
    sb.mkdir(parents=True)
    future = time.time() + 100 * 365 * 86400
    os.utime(sb, (future, future))
    fake = SimpleNamespace(
        cfg=SimpleNamespace(data_dir=str(tmp_path)),
        lock=threading.Lock(),
        states=SimpleNamespace(tasks={}),
        checkpoint=SimpleNamespace(refused=False),
    )
    assert Borglet.gc_sandboxes(fake, time.time() + 2 * SANDBOX_RETENTION_S) == 1  # type: ignore[arg-type]
    assert not sb.exists()


def test_http_health_probe_is_bounded_in_time_and_size() -> None:
    """A task answering one byte at a time (never a full line) costs one timeout."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            while not stop.is_set():
                try:
                    conn.send(b"H")
                except OSError:
                    return
                stop.wait(0.05)

    th = threading.Thread(target=trickle, daemon=True)
    th.start()
    result: list[bool] = []
    probe = threading.Thread(target=lambda: result.append(probe_http(port, "/", 0.5)))
    try:
        probe.start()
        probe.join(3.0)  # a join, not a sleep: returns as soon as the probe gives up
        assert not probe.is_alive(), "the probe outlived its timeout"
        assert result == [False]
    finally:
        stop.set()
        srv.close()
        th.join(5)
