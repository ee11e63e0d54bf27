"""The v2 driver against the kernel's real cgroup2 filesystem, wherever the host mounts it.

A pure-v2 host (the `device` machine) runs the full driver test in test_runtime_cgroups.py.
Hybrid hosts like CI mount cgroup2 at /sys/fs/cgroup/unified with the controllers bound to
the v1 hierarchies; there the v2 driver still runs for real, managing only the controllers
the mount offers (often none): creating task cgroups under the parent, the shim's child
joining ``cgroup.procs`` before exec, ``cgroup.events``, stopping a daemonized tree with
SIGTERM and then ``cgroup.kill`` (or the freezer fallback), listing and removal. Limits are covered
by the fake-tree unit tests and, on a pure-v2 host, by test_v2_driver_on_real_host.

Needs root and a writable cgroup2 mount; skipped otherwise.
"""

from __future__ import annotations

import os
import pwd
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from borglet.runtime.cgroups import V2_CONTROLLERS, CgroupV2, Limits
from borglet.runtime.process import ProcessRuntime, SpawnSpec, TaskProcess
from tests.cgroup_util import alive, tear_down, wait_for

pytestmark = pytest.mark.cgroups

MI = 1 << 20


def cgroup2_mount() -> str | None:
    """The first cgroup2 mount point in /proc/self/mounts, or None."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    return fields[1].replace("\\040", " ")
    except OSError:
        return None
    return None


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create cgroups and switch users"
    mnt = cgroup2_mount()
    if mnt is None:
        return "no cgroup2 filesystem mounted"
    if not os.access(os.path.join(mnt, "cgroup.procs"), os.W_OK):
        return f"cgroup2 at {mnt} is not writable"
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return "no 'nobody' account"
    return None


SKIP = _skip_reason()
MOUNT = cgroup2_mount() or ""


def v2_path_of(pid: int) -> str:
    """The process's cgroup in the unified hierarchy ("0::/path" line of /proc/PID/cgroup)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    raise AssertionError(f"pid {pid} has no cgroup2 line")


@dataclass
class Env:
    driver: CgroupV2
    runtime: ProcessRuntime
    base: str
    started: list[tuple[str, TaskProcess]]

    def start(self, name: str, argv: list[str]) -> TaskProcess:
        spec = SpawnSpec(
            task_id=name,
            argv=argv,
            env={},
            sandbox=os.path.join(self.base, name),
            user="nobody",
            limits=Limits(cpu=0.5, memory=64 * MI),
        )
        proc = self.runtime.start(spec)
        self.started.append((name, proc))
        return proc

    def dir(self, name: str) -> str:
        return os.path.join(self.driver.root, self.driver.parent, name)


@pytest.fixture
def env() -> Iterator[Env]:
    if SKIP is not None:
        pytest.skip(SKIP)
    with open(os.path.join(MOUNT, "cgroup.controllers")) as f:
        offered = tuple(c for c in V2_CONTROLLERS if c in f.read().split())
    driver = CgroupV2(MOUNT, f"borgcell-v2test-{os.getpid()}", controllers=offered)
    driver.setup()
    base = tempfile.mkdtemp(prefix="borgcell-v2-", dir="/tmp")
    os.chmod(base, 0o755)  # nobody must reach its sandbox
    e = Env(driver, ProcessRuntime(driver, control_root=os.path.join(base, "run")), base, [])
    try:
        yield e
    finally:
        tear_down(driver, e.runtime, e.started, base)


def test_task_and_its_child_run_in_their_cgroup2_cgroup(env: Env) -> None:
    name = "v2m.0.x"
    proc = env.start(name, ["sh", "-c", "sleep 100 & wait"])
    wait_for(lambda: len(env.driver.pids(name)) == 2, 5, "task and child in the cgroup")
    want = f"/{env.driver.parent}/{name}"
    for pid in env.driver.pids(name):
        assert v2_path_of(pid) == want
        assert psutil.Process(pid).uids().real == pwd.getpwnam("nobody").pw_uid
    assert proc.shim_pid not in env.driver.pids(name)  # the shim is never charged to the task
    with open(os.path.join(env.dir(name), "cgroup.events")) as f:
        assert "populated 1" in f.read()
    env.runtime.stop(name, proc, grace_s=1)
    assert proc.poll() is not None
    assert not env.driver.exists(name)


@pytest.mark.parametrize(
    "script",
    [
        "(setsid sleep 1000 &) ; sleep 1000",
        # ignores SIGTERM (inherited by its children): only cgroup.kill / SIGKILL can stop it
        "trap '' TERM; (setsid sleep 1000 &) ; sleep 1000",
    ],
    ids=["term", "needs-kill"],
)
def test_stop_kills_a_daemonized_tree_through_cgroup2(env: Env, script: str) -> None:
    name = "v2d.0.x"
    proc = env.start(name, ["sh", "-c", script])

    def escaped() -> bool:
        sessions = {os.getsid(p) for p in env.driver.pids(name) if alive(p)}
        return len(sessions) >= 2

    wait_for(escaped, 5, "the daemonized child")
    pids = env.driver.pids(name)
    env.runtime.stop(name, proc, grace_s=0.5)
    assert proc.poll() is not None
    assert not [p for p in pids if alive(p)]
    assert not env.driver.exists(name)


def test_sigkill_empties_the_cgroup_even_when_processes_fork(env: Env) -> None:
    """cgroup.kill (5.14+) or the freeze-then-kill fallback: no fork can outrun it."""
    name = "v2f.0.x"
    env.start(name, ["sh", "-c", "while :; do sleep 1000 & done"])
    wait_for(lambda: len(env.driver.pids(name)) > 20, 5, "a busy forking task")
    env.driver.kill(name, signal.SIGKILL)
    wait_for(lambda: not env.driver.pids(name), 5, "the cgroup to empty")
    events = Path(env.dir(name), "cgroup.events")
    wait_for(lambda: "populated 0" in events.read_text(), 5, "cgroup.events: populated 0")
    assert env.driver.remove(name)


def test_leftover_cgroups_are_listed_and_removed(env: Env) -> None:
    """What a Borglet start does with cgroups of tasks it no longer knows."""
    for n in ("old.0.a", "old.1.b"):
        env.driver.create(n, Limits(cpu=0, memory=0))
    assert {"old.0.a", "old.1.b"} <= set(env.driver.list())
    for n in env.driver.list():
        assert not env.driver.pids(n)
        assert env.driver.remove(n)
    assert env.driver.list() == []
