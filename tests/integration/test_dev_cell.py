"""`borgmaster dev` (what `make run` starts): a whole cell that runs examples/hello.jsonnet
and leaves nothing behind on Ctrl-C/SIGTERM."""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import grpc
import pytest

from borglet.runtime.cgroups import detect
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import REPO, free_port, processes_with_env, remove_empty_top_cgroups, wait_for
from tests.conftest import cgroups_usable

pytestmark = pytest.mark.e2e


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _dev_ports() -> tuple[int, int]:
    """A gRPC and an HTTP port whose neighbours dev uses (raft at -10, Borglet at +1)."""
    for _ in range(50):
        g, h = free_port(), free_port()
        if g > 1100 and all(_port_free(p) for p in (g - 10, g + 1, h + 1)):
            return g, h
    raise RuntimeError("no free port block for the dev cell")


@pytest.fixture
def dev_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="borgcell-dev-")
    os.chmod(d, 0o755)
    # where the dev cell records its client certificate for borgcfg (not the real ~/.config)
    monkeypatch.setenv("XDG_CONFIG_HOME", os.path.join(d, "config"))
    monkeypatch.delenv("BORG_TLS_DIR", raising=False)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def borgcfg(master: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cfg.cli", "--master", master, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def start_dev(dev_dir: str, g: int, h: int, *extra: str) -> subprocess.Popen[bytes]:
    """`borgmaster dev` in its own session (so a test can Ctrl-C its whole process group),
    output appended to dev_dir/dev.log."""
    with open(os.path.join(dev_dir, "dev.log"), "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "borgmaster.cli",
                "dev",
                "--data-dir",
                dev_dir,
                "--grpc",
                f"127.0.0.1:{g}",
                "--http",
                f"127.0.0.1:{h}",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )


def clean_up(dev: subprocess.Popen[bytes], log_path: str) -> None:
    """Kill a dev cell that is still up (the test failed), drop empty top cgroups, and print
    the tail of its log (shown by pytest only on failure)."""
    if dev.poll() is None:
        os.killpg(dev.pid, signal.SIGKILL)
        dev.wait(10)
    remove_empty_top_cgroups()
    with open(log_path, errors="replace") as f:
        print(f.read()[-8000:])


def test_dev_cell_runs_hello_and_cleans_up_on_sigterm(dev_dir: str) -> None:
    why = cgroups_usable()
    if why:
        pytest.skip(why)
    g, h = _dev_ports()
    master = f"127.0.0.1:{g}"
    log_path = os.path.join(dev_dir, "dev.log")
    dev = start_dev(dev_dir, g, h)
    host = socket.gethostname().split(".")[0].lower() or "localhost"
    try:
        wait_for(
            lambda: '"state": "up"' in borgcfg(master, "machines", "-o", "json").stdout,
            30,
            what="dev Borglet registered",
        )
        r = borgcfg(master, "up", os.path.join(REPO, "examples/hello.jsonnet"), "--wait")
        assert r.returncode == 0, r.stderr
        r = borgcfg(master, "status", "hello", "-o", "json")
        assert r.returncode == 0
        assert r.stdout.count('"state": "running"') == 3  # the job and its two tasks
        assert len(processes_with_env("BORG_JOB", "hello")) >= 2
        # TLS by default: borgcfg found the dev cell's admin certificate without flags (the
        # job's owner is its name); plaintext is refused; the UI is HTTPS behind a login link
        st = json.loads(r.stdout)
        assert st["user"] == _login_name()
        with grpc.insecure_channel(master) as ch, pytest.raises(grpc.RpcError):
            borg_pb2_grpc.BorgmasterStub(ch).ListJobs(pb.ListJobsRequest(), timeout=3)
        link = borgcfg(master, "ui").stdout.strip()
        assert link.startswith(f"https://127.0.0.1:{h}/login?token="), link
        driver = detect("/sys/fs/cgroup", f"borgcell/{host}")
        assert driver is not None and len(driver.list()) == 2

        dev.send_signal(signal.SIGTERM)
        assert dev.wait(60) == 0
        assert not processes_with_env("BORG_JOB", "hello")
        assert not driver.list()
    finally:
        clean_up(dev, log_path)


def _login_name() -> str:
    """The dev cell's admin certificate name: the login user, as a certificate name."""
    return re.sub(r"[^a-z0-9._-]", "-", getpass.getuser().lower()).strip("-._") or "dev"


def _hello_running(master: str) -> bool:
    r = borgcfg(master, "status", "hello", "-o", "json")
    return r.returncode == 0 and r.stdout.count('"state": "running"') == 3


def test_dev_cell_restart_runs_the_service_job_again(dev_dir: str) -> None:
    """`make run`, `up hello --wait`, Ctrl-C, `make run` again: hello runs again, like after a
    machine reboot. Ctrl-C reaches the Borglets too (same process group) while the master
    still runs; the tasks they kill on the way out must not be recorded as killed."""
    why = cgroups_usable()
    if why:
        pytest.skip(why)
    g, h = _dev_ports()
    master = f"127.0.0.1:{g}"
    log_path = os.path.join(dev_dir, "dev.log")
    dev = start_dev(dev_dir, g, h, "--machines", "2")
    try:
        wait_for(
            lambda: borgcfg(master, "machines", "-o", "json").stdout.count('"state": "up"') == 2,
            30,
            what="dev Borglets registered",
        )
        r = borgcfg(master, "up", os.path.join(REPO, "examples/hello.jsonnet"), "--wait")
        assert r.returncode == 0, r.stderr
        assert _hello_running(master)

        os.killpg(dev.pid, signal.SIGINT)  # Ctrl-C
        assert dev.wait(60) == 0
        assert not processes_with_env("BORG_JOB", "hello")

        dev = start_dev(dev_dir, g, h, "--machines", "2")
        # Processes first: right after the restart the master still shows its last record
        # (running), so only new task processes prove the Borglets started them again.
        wait_for(
            lambda: len(processes_with_env("BORG_JOB", "hello")) >= 2,
            60,
            what="hello's processes started again after the restart",
        )
        wait_for(lambda: _hello_running(master), 30, what="hello running again")
        r = borgcfg(master, "status", "hello", "-o", "json")
        assert '"killed"' not in r.stdout, r.stdout
        r = borgcfg(master, "up", os.path.join(REPO, "examples/hello.jsonnet"), "--wait")
        assert r.returncode == 0, r.stderr

        dev.send_signal(signal.SIGTERM)
        assert dev.wait(60) == 0
        assert not processes_with_env("BORG_JOB", "hello")
    finally:
        clean_up(dev, log_path)
