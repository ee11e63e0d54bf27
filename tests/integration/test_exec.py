"""`borgcfg exec` end to end (SPEC part 2, "Operating the cell"): a real TLS cell, a real task,
the command relayed master -> Borglet and run beside the task.

Covers: the command's user, sandbox, environment and cgroup are the task's; stdin, stdout,
stderr and the exit code are relayed; `-t` gives a terminal of the caller's size; the owner
and admins may exec, another user or a reader may not (and the audit log says who did);
a task that ends takes its exec sessions with it.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import REPO, Cell, running_cell, wait_for
from tests.conftest import cgroups_usable

pytestmark = [pytest.mark.e2e]

JOB = """\
name: {name}
kind: service
replicas: 1
command: exec sleep 600
env:
  GREETING: hello-from-{name}
requirements:
  cpu: 0.05
  ram: 64Mi
"""


@pytest.fixture(scope="module")
def cell() -> Iterator[Cell]:
    why = cgroups_usable()
    if why:
        pytest.skip(why)
    with running_cell(1, 1, tls=True, audit=True) as c:
        yield c


@pytest.fixture(scope="module")
def owner(cell: Cell) -> str:
    return cell.cert("user", "olga", hosts=())


def up(cell: Cell, who: str, tmp: Path, name: str) -> None:
    f = tmp / f"{name}.yaml"
    f.write_text(JOB.format(name=name))
    r = cell.borgcfg("up", str(f), "--wait", "--timeout", "60", tls_dir=who)
    assert r.returncode == 0, r.stderr


def borgcfg_exec(
    cell: Cell, who: str, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cfg.cli", "--master", cell.master_addrs, "--tls-dir", who]
    return subprocess.run(
        [*argv, "exec", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_exec_runs_as_the_task_in_its_cgroup_sandbox_and_env(
    cell: Cell, owner: str, tmp_path: Path
) -> None:
    up(cell, owner, tmp_path, "ex1")
    script = (
        "id -un; pwd; echo $GREETING $BORG_JOB $BORG_TASK_INDEX; cat /proc/self/cgroup; "
        "echo oops >&2; exit 7"
    )
    r = borgcfg_exec(cell, owner, "ex1/0", "--", "sh", "-c", script)
    assert r.returncode == 7, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "nobody"
    data = os.path.realpath(cell.borglets[0].info["data"])
    assert lines[1].startswith(data + "/") and "ex1" in lines[1], (data, lines[1])
    assert lines[2] == "hello-from-ex1 ex1 0"
    cgroup = cell.task_cgroup(cell.borglets[0], "ex1", 0)
    assert cgroup is not None
    assert any(line.endswith("/" + os.path.basename(cgroup)) for line in lines[3:]), lines[3:]
    assert r.stderr == "oops\n"


def test_exec_relays_stdin_and_gives_a_terminal_with_t(
    cell: Cell, owner: str, tmp_path: Path
) -> None:
    up(cell, owner, tmp_path, "ex2")
    r = borgcfg_exec(cell, owner, "ex2/0", "--", "wc", "-l", stdin="a\nb\nc\n")
    assert r.returncode == 0 and r.stdout.strip() == "3", r.stderr
    # -t under a real terminal of 33x101: the command sees a tty of that size
    fd, slave = pty.openpty()
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    argv = [sys.executable, "-m", "cfg.cli", "--master", cell.master_addrs, "--tls-dir", owner]
    p = subprocess.Popen(
        [*argv, "exec", "-t", "ex2/0", "--", "sh", "-c", "tty; stty size; exit 5"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
        start_new_session=True,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: borgcfg exited and closed the terminal
            break
        if not chunk:
            break
        out += chunk
    code = p.wait(timeout=30)
    os.close(fd)
    text = out.decode(errors="replace")
    assert code == 5, text
    assert "/dev/pts/" in text and "33 101" in text, text


def test_only_the_owner_and_admins_may_exec_and_the_audit_log_says_who(
    cell: Cell, owner: str, tmp_path: Path
) -> None:
    up(cell, owner, tmp_path, "ex3")
    mallory = cell.cert("user", "mallory", hosts=())
    r = borgcfg_exec(cell, mallory, "ex3/0", "--", "cat", "/proc/1/environ")
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "borgcfg: permission denied: mallory may not exec into tasks of job 'ex3' (owner olga)"
    )
    rita = cell.cert("reader", "rita", hosts=())
    r = borgcfg_exec(cell, rita, "ex3/0", "--", "true")
    assert r.returncode == 1 and "rita (reader) may not exec into tasks" in r.stderr
    admin = cell.cert("admin", "admin")
    assert borgcfg_exec(cell, admin, "ex3/0", "--", "true").returncode == 0
    r = borgcfg_exec(cell, owner, "nosuch/0", "--", "true")
    assert r.returncode == 1 and "task nosuch/0 does not exist" in r.stderr

    def records() -> list[dict[str, str]]:
        lines = Path(cell.audit_log(0)).read_text().splitlines()
        return [json.loads(x) for x in lines if '"ExecTask"' in x]

    recs = wait_for(lambda: [r for r in records() if r["target"].startswith("ex3/0")], 10)
    who = {(r["identity"], r["result"].split(":")[0]) for r in recs}
    assert ("mallory", "PERMISSION_DENIED") in who and ("admin", "ok") in who


def test_a_task_that_ends_ends_its_exec_sessions(cell: Cell, owner: str, tmp_path: Path) -> None:
    up(cell, owner, tmp_path, "ex4")
    argv = [sys.executable, "-m", "cfg.cli", "--master", cell.master_addrs, "--tls-dir", owner]
    p = subprocess.Popen(
        [*argv, "exec", "ex4/0", "--", "sh", "-c", "echo started; exec sleep 300"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == "started\n"
        assert cell.borgcfg("down", "ex4", tls_dir=owner).returncode == 0
        code = p.wait(timeout=30)
        # stopping the task signals its whole cgroup: TERM, then KILL after the grace period
        assert code in (128 + 15, 128 + 9), p.stderr.read() if p.stderr else ""
    finally:
        if p.poll() is None:
            p.kill()
