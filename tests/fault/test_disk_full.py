"""A master whose disk fills: writes are refused with "disk full on replica m0" (UNAVAILABLE),
the free space and the refusal are metrics, and the master lives on and takes writes again
once there is room. With the reserve off (`--min-free 0`), the journal's own guard
(posix_fallocate before each record) turns what used to be SIGBUS in PySyncObj's mmap into a
refused write. The data dir is a small tmpfs (needs root, as CI runs)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import grpc
import pytest

from tests.cluster import Cell, add_master_with_args, free_port, wait_for
from tests.fault.util import Stubs, submit

pytestmark = [pytest.mark.e2e]

SIZE_MB = 24


def mount_tmpfs(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m,mode=0700", "tmpfs", path],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): needs root")


def fill(path: str, leave: int) -> None:
    """Take all but `leave` bytes of the file system at `path` (one more file each call)."""
    st = os.statvfs(path)
    take = st.f_bavail * st.f_frsize - leave
    if take <= 0:
        return
    fd = os.open(os.path.join(path, f"filler-{uuid.uuid4().hex}"), os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, take)
    finally:
        os.close(fd)


def unfill(path: str) -> None:
    for n in os.listdir(path):
        if n.startswith("filler-"):
            os.unlink(os.path.join(path, n))


def one_master(min_free: str) -> Iterator[tuple[Cell, str]]:
    cell = Cell()
    data = os.path.join(cell.base, "m0")
    mount_tmpfs(data)
    try:
        add_master_with_args(
            cell, 0, f"127.0.0.1:{free_port()}", [], extra=["--min-free", min_free]
        )
        cell.wait_ready()
        yield cell, data
    finally:
        cell.close()
        subprocess.run(["umount", "-l", data], check=False)


@pytest.fixture
def reserved() -> Iterator[tuple[Cell, str]]:
    yield from one_master("8Mi")


@pytest.fixture
def unreserved() -> Iterator[tuple[Cell, str]]:
    yield from one_master("0")


def attempt(stubs: Stubs, cell: Cell, name: str) -> tuple[grpc.StatusCode, str]:
    try:
        submit(stubs, cell.masters[0].info["grpc"], name, str(uuid.uuid4()), timeout=15)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


def test_writes_are_refused_below_the_reserve_and_resume_with_room(
    reserved: tuple[Cell, str],
) -> None:
    cell, data = reserved
    m0 = cell.masters[0]
    stubs = Stubs()
    try:
        assert attempt(stubs, cell, "before") == (grpc.StatusCode.OK, "")
        fill(data, leave=4 << 20)
        code, msg = attempt(stubs, cell, "while-full")
        assert code == grpc.StatusCode.UNAVAILABLE, (code, msg)
        assert msg.startswith("disk full on replica m0: ") and data in msg, msg
        assert "writes need 8.0Mi" in msg
        _, metrics = cell.http_get(m0.info["http"], "/metrics")
        assert "borg_data_dir_writes_refused 1.0" in metrics
        free = next(
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("borg_data_dir_free_bytes ")
        )
        assert 0 < free < 8 << 20
        # Reads still work (a lone leader needs no barrier entry).
        assert cell.borgcfg("status", "before").returncode == 0
        unfill(data)
        wait_for(lambda: attempt(stubs, cell, "after") == (grpc.StatusCode.OK, ""), 10)
        assert m0.alive()
    finally:
        stubs.close()


def test_a_full_disk_without_reserve_refuses_the_append_instead_of_sigbus(
    unreserved: tuple[Cell, str],
) -> None:
    cell, data = unreserved
    m0 = cell.masters[0]
    stubs = Stubs()
    try:
        assert attempt(stubs, cell, "before") == (grpc.StatusCode.OK, "")
        fill(data, leave=0)
        # Writes go on into the journal's last allocated page; the first that needs a new
        # block is refused (a page holds a few entries: a few hundred writes at most).
        answer = (grpc.StatusCode.OK, "")
        for i in range(500):
            answer = attempt(stubs, cell, f"full-{i}")
            if answer[0] != grpc.StatusCode.OK:
                break
        code, msg = answer
        assert code == grpc.StatusCode.UNAVAILABLE, answer
        assert msg.startswith("disk full on replica m0: "), msg
        assert m0.alive(), m0.log()[-3000:]
        assert "no disk space for Raft log entry" in m0.log()
        unfill(data)
        wait_for(lambda: attempt(stubs, cell, "after") == (grpc.StatusCode.OK, ""), 15)
        assert m0.alive()
    finally:
        stubs.close()
