"""ProcessRuntime against the host's real cgroups: limits, OOM, CPU quota, clean stop.

Needs root and a writable cgroup hierarchy (v1 or v2); skipped otherwise. Everything lives
under a per-run parent cgroup that is removed at teardown.
"""

from __future__ import annotations

import os
import pwd
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from borglet.runtime.cgroups import CgroupDriver, Limits, detect
from borglet.runtime.process import ExecError, ProcessRuntime, SpawnSpec, TaskProcess, UserError
from tests.cgroup_util import alive, tear_down, wait_for

pytestmark = pytest.mark.cgroups

MI = 1 << 20
ROOT = "/sys/fs/cgroup"
PYTHON = "/usr/bin/python3"  # readable by nobody (a pyenv/venv python under /root is not)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create cgroups and switch users"
    if detect(ROOT, "borgcell-probe") is None:
        return f"no writable cgroup v1/v2 hierarchy with cpu, memory and pids at {ROOT}"
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return "no 'nobody' account"
    return None


SKIP = _skip_reason()
needs_cgroups = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


@dataclass
class Env:
    driver: CgroupDriver
    runtime: ProcessRuntime
    base: str
    parent: str
    started: list[tuple[str, TaskProcess]]

    def start(self, name: str, argv: list[str], limits: Limits) -> TaskProcess:
        spec = SpawnSpec(
            task_id=name,
            argv=argv,
            env={"BORG_JOB": "test"},
            sandbox=os.path.join(self.base, name),
            user="nobody",
            limits=limits,
        )
        proc = self.runtime.start(spec)
        self.started.append((name, proc))
        return proc

    def cgroup_file(self, name: str, v1_controller: str, filename: str) -> str:
        if self.driver.version == 2:
            return os.path.join(ROOT, self.parent, name, filename)
        return os.path.join(ROOT, v1_controller, self.parent, name, filename)


@pytest.fixture
def env() -> Iterator[Env]:
    if SKIP is not None:
        pytest.skip(SKIP)
    parent = f"borgcell-test-{os.getpid()}"
    driver = detect(ROOT, parent)
    assert driver is not None
    driver.setup()
    base = tempfile.mkdtemp(prefix="borgcell-it-", dir="/tmp")
    os.chmod(base, 0o755)  # nobody must reach its sandbox
    e = Env(driver, ProcessRuntime(driver), base, parent, [])
    try:
        yield e
    finally:
        tear_down(driver, e.runtime, e.started, base)


def proc_cgroup_path(pid: int, version: int, v1_controller: str = "memory") -> str:
    """The task's cgroup path as /proc/PID/cgroup shows it (memory hierarchy on v1)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if version == 2 and controllers == "":
                return path
            if version == 1 and v1_controller in controllers.split(","):
                return path
    raise AssertionError(f"no cgroup line for pid {pid}")


@needs_cgroups
def test_task_and_child_in_cgroup_as_nobody(env: Env) -> None:
    name = "hello.0.ab12cd"
    proc = env.start(name, ["sh", "-c", "sleep 100 & wait"], Limits(cpu=0.5, memory=64 * MI))
    wait_for(lambda: psutil.Process(proc.pid).children(), 5, "the forked child")
    (child,) = psutil.Process(proc.pid).children()
    nobody = pwd.getpwnam("nobody")
    for pid in (proc.pid, child.pid):
        assert proc_cgroup_path(pid, env.driver.version).endswith(f"/{env.parent}/{name}")
        assert psutil.Process(pid).uids().real == nobody.pw_uid
        assert psutil.Process(pid).gids().real == nobody.pw_gid
    assert sorted(env.driver.pids(name)) == sorted([proc.pid, child.pid])
    limit_file = env.cgroup_file(
        name, "memory", "memory.max" if env.driver.version == 2 else "memory.limit_in_bytes"
    )
    with open(limit_file) as f:
        assert int(f.read()) == 64 * MI
    st = os.stat(os.path.join(env.base, name))
    assert (st.st_uid, st.st_mode & 0o777) == (nobody.pw_uid, 0o700)
    env.runtime.stop(name, proc, grace_s=2)
    assert proc.poll() is not None
    assert not env.driver.exists(name)


@needs_cgroups
def test_shim_competes_for_cpu_inside_the_parent(env: Env) -> None:
    """A task's supervisor (its shim) runs in the parent's `_supervisors` leaf, so thousands
    of them starting at once weigh on the Borglet's share of the CPU, not on the host's other
    processes (a co-located master); the task itself stays in its own cgroup, and the leaf is
    never listed as a task."""
    name = "calm.0.ab12cd"
    proc = env.start(name, ["sleep", "100"], Limits(cpu=0.1, memory=64 * MI))
    shim = proc_cgroup_path(proc.shim_pid, env.driver.version, "cpu")
    assert shim.endswith(f"/{env.parent}/_supervisors"), shim
    task = proc_cgroup_path(proc.pid, env.driver.version, "cpu")
    assert task.endswith(f"/{env.parent}/{name}"), task
    assert env.driver.list() == [name]
    env.runtime.stop(name, proc, grace_s=2)


@needs_cgroups
def test_memory_hog_is_oom_killed(env: Env) -> None:
    if not os.access(PYTHON, os.X_OK):
        pytest.skip(f"{PYTHON} not available")
    name = "oom.0.x"
    code = "chunks = []\nwhile True:\n    chunks.append(b'x' * (8 << 20))\n"
    proc = env.start(name, [PYTHON, "-c", code], Limits(cpu=1, memory=50 * MI))
    wait_for(lambda: proc.poll() is not None, 20, "the OOM kill")
    assert proc.poll() == -signal.SIGKILL
    assert env.runtime.oom_killed(name)
    with open(os.path.join(env.base, name, "stderr")) as f:
        assert "borglet-shim" not in f.read()


@needs_cgroups
def test_cpu_quota_caps_usage(env: Env) -> None:
    name = "hog.0.x"
    proc = env.start(name, ["sh", "-c", "while :; do :; done"], Limits(cpu=0.2, memory=64 * MI))
    wait_for(lambda: env.runtime.stats(name).cpu_seconds > 0.01, 5, "the hog to run")
    t0, c0 = time.monotonic(), env.runtime.stats(name).cpu_seconds
    wait_for(lambda: time.monotonic() - t0 >= 2.5, 5, "the measurement window")
    t1, c1 = time.monotonic(), env.runtime.stats(name).cpu_seconds
    cores = (c1 - c0) / (t1 - t0)
    assert 0.05 <= cores <= 0.3, f"cpu 0.2 task used {cores:.2f} cores"
    assert proc.poll() is None


@needs_cgroups
@pytest.mark.parametrize(
    "script",
    [
        "(setsid sleep 1000 &) ; sleep 1000",
        # ignores SIGTERM (inherited by its children), so only the SIGKILL path can stop it
        "trap '' TERM; (setsid sleep 1000 &) ; sleep 1000",
    ],
    ids=["term", "needs-kill"],
)
def test_stop_kills_daemonized_children(env: Env, script: str) -> None:
    name = "daemon.0.x"
    proc = env.start(name, ["sh", "-c", script], Limits(cpu=0.5, memory=64 * MI))

    def escaped() -> bool:
        sessions = {os.getsid(p) for p in env.driver.pids(name) if alive(p)}
        return len(sessions) >= 2

    wait_for(escaped, 5, "the daemonized child")
    pids = env.driver.pids(name)
    t0 = time.monotonic()
    env.runtime.stop(name, proc, grace_s=0.5)
    assert time.monotonic() - t0 < 5
    assert proc.poll() is not None
    assert not [p for p in pids if alive(p)]
    assert not env.driver.exists(name)
    assert name not in env.driver.list()


@needs_cgroups
def test_missing_command_is_an_exec_error_at_start(env: Env) -> None:
    name = "bad.0.x"
    with pytest.raises(ExecError, match=r"^exec: not found$"):
        env.start(name, ["no-such-command-xyz"], Limits(cpu=0.5, memory=64 * MI))
    assert not env.driver.exists(name)


def test_unknown_user_is_refused(tmp_path: Path) -> None:
    runtime = ProcessRuntime(None)
    spec = SpawnSpec("u.0.x", ["true"], {}, str(tmp_path), "no-such-user-borgcell", Limits(1, MI))
    with pytest.raises(UserError, match="does not exist on this machine"):
        runtime.start(spec)


def test_root_is_refused_without_allow_root(tmp_path: Path) -> None:
    runtime = ProcessRuntime(None)
    spec = SpawnSpec("r.0.x", ["true"], {}, str(tmp_path), "root", Limits(1, MI))
    with pytest.raises(UserError, match="--allow-root-tasks"):
        runtime.start(spec)


@pytest.mark.skipif(
    SKIP is not None or not os.path.isfile(os.path.join(ROOT, "cgroup.controllers")),
    reason=SKIP or f"host is not cgroup v2 (no {ROOT}/cgroup.controllers)",
)
def test_v2_driver_on_real_host(env: Env) -> None:
    assert env.driver.version == 2
    name = "v2.0.x"
    proc = env.start(name, ["sh", "-c", "sleep 100 & wait"], Limits(cpu=0.5, memory=64 * MI))
    wait_for(lambda: len(env.driver.pids(name)) == 2, 5, "task and child in the cgroup")
    with open(env.cgroup_file(name, "", "cpu.max")) as f:
        assert f.read().split() == ["50000", "100000"]
    with open(env.cgroup_file(name, "", "memory.max")) as f:
        assert int(f.read()) == 64 * MI
    assert env.runtime.stats(name).memory_bytes > 0
    env.runtime.stop(name, proc, grace_s=1)
    assert not env.driver.exists(name)


@needs_cgroups
def test_warm_shim_starts_task_and_unused_ones_exit_on_close(env: Env) -> None:
    runtime = ProcessRuntime(
        env.driver,
        control_root=os.path.join(env.base, "run"),
        warm_shims=2,
        shim_cache=os.path.join(env.base, "shim"),
    )
    assert runtime.shim.endswith(".pyc")  # the compiled shim runs the task (as the Borglet's)
    runtime.prefill()
    warm = [p.pid for p, _ in runtime._warm]
    assert len(warm) == 2
    spec = SpawnSpec(
        "warm.0.x",
        ["sh", "-c", "exit 5"],
        {},
        os.path.join(env.base, "warm.0.x"),
        "nobody",
        Limits(cpu=0.5, memory=64 * MI),
    )
    proc = runtime.start(spec)
    assert proc.shim_pid in warm  # a warm one took it, and the pool was refilled
    wait_for(lambda: proc.poll() is not None, 5, "the task to exit")
    assert proc.poll() == 5
    runtime.stop("warm.0.x", proc, grace_s=0.1)
    idle = [p for p, _ in runtime._warm]
    runtime.close()
    assert all(p.poll() == 0 for p in idle)
