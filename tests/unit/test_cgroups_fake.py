"""Cgroup v1/v2 drivers against a fake cgroupfs made of plain directories and files."""

from __future__ import annotations

import marshal
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from borglet.runtime.cgroups import (
    CgroupError,
    CgroupV1,
    CgroupV2,
    Limits,
    detect,
)
from borglet.runtime.process import SHIM_PATH

V1_DIRS = ("cpu", "cpuacct", "memory", "pids", "freezer")
MI = 1 << 20


def make_v1(root: Path, dirs: tuple[str, ...] = V1_DIRS) -> Path:
    for d in dirs:
        (root / d).mkdir(parents=True)
    return root


def make_v2(root: Path, controllers: str = "cpuset cpu io memory hugetlb pids rdma") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def read(p: Path) -> str:
    return p.read_text().strip()


# --- v1 -----------------------------------------------------------------------------------


def test_v1_create_writes_limits(tmp_path: Path) -> None:
    root = make_v1(tmp_path)
    drv = CgroupV1(str(root), "borgcell/m1")
    drv.setup()
    for c in V1_DIRS:
        assert (root / c / "borgcell" / "m1").is_dir()
    drv.create("hello.0.ab12cd", Limits(cpu=0.5, memory=64 * MI, pids=100))
    cpu = root / "cpu" / "borgcell" / "m1" / "hello.0.ab12cd"
    mem = root / "memory" / "borgcell" / "m1" / "hello.0.ab12cd"
    assert read(cpu / "cpu.cfs_quota_us") == "50000"
    assert read(cpu / "cpu.cfs_period_us") == "100000"
    assert read(cpu / "cpu.shares") == "512"
    assert read(mem / "memory.limit_in_bytes") == str(64 * MI)
    assert read(mem / "memory.memsw.limit_in_bytes") == str(64 * MI)
    assert read(root / "pids" / "borgcell" / "m1" / "hello.0.ab12cd" / "pids.max") == "100"
    assert drv.exists("hello.0.ab12cd")
    assert drv.list() == ["hello.0.ab12cd"]


def test_v1_devices_deny_other_gpus(tmp_path: Path) -> None:
    root = make_v1(tmp_path, (*V1_DIRS, "devices"))
    drv = CgroupV1(str(root), "borgcell/m1")
    drv.setup()
    deny = (("c", 195, 0), ("c", 195, 2))
    drv.create("t.0.a", Limits(cpu=1, memory=MI, deny_devices=deny))
    cg = root / "devices" / "borgcell" / "m1" / "t.0.a"
    # Each entry is one write to devices.deny (the fake file keeps the last one).
    assert read(cg / "devices.deny") == "c 195:2 rwm"
    assert str(cg / "cgroup.procs") in drv.procs_files("t.0.a")
    # Without the devices controller a task that must be kept off GPUs does not start.
    bare = CgroupV1(str(make_v1(tmp_path / "bare")), "borgcell/m1")
    bare.setup()
    with pytest.raises(CgroupError, match="no v1 devices controller"):
        bare.create("t.0.a", Limits(cpu=1, memory=MI, deny_devices=deny))
    bare.create("u.0.a", Limits(cpu=1, memory=MI))  # nothing to deny: fine


def test_v1_small_cpu_and_no_limits(tmp_path: Path) -> None:
    drv = CgroupV1(str(make_v1(tmp_path)), "p")
    drv.create("a", Limits(cpu=0.001, memory=0))
    assert read(tmp_path / "cpu/p/a/cpu.cfs_quota_us") == "1000"  # kernel minimum
    assert read(tmp_path / "cpu/p/a/cpu.shares") == "2"
    assert read(tmp_path / "memory/p/a/memory.limit_in_bytes") == "-1"
    assert read(tmp_path / "pids/p/a/pids.max") == "4096"
    drv.create("b", Limits(cpu=0, memory=MI))
    assert read(tmp_path / "cpu/p/b/cpu.cfs_quota_us") == "-1"


def test_v1_comounted_cpu_cpuacct(tmp_path: Path) -> None:
    make_v1(tmp_path, ("cpu,cpuacct", "memory", "pids"))
    drv = detect(str(tmp_path), "p")
    assert isinstance(drv, CgroupV1)
    drv.setup()
    drv.create("t", Limits(cpu=2, memory=MI))
    assert read(tmp_path / "cpu,cpuacct/p/t/cpu.cfs_quota_us") == "200000"
    files = drv.procs_files("t")
    assert files == [
        str(tmp_path / "cpu,cpuacct/p/t/cgroup.procs"),
        str(tmp_path / "memory/p/t/cgroup.procs"),
        str(tmp_path / "pids/p/t/cgroup.procs"),
    ]


def test_v1_procs_files_one_per_controller(tmp_path: Path) -> None:
    drv = CgroupV1(str(make_v1(tmp_path)), "borgcell/m1")
    assert drv.procs_files("t") == [
        str(tmp_path / c / "borgcell/m1/t/cgroup.procs") for c in V1_DIRS
    ]


def test_v1_stats(tmp_path: Path) -> None:
    drv = CgroupV1(str(make_v1(tmp_path)), "p")
    drv.create("t", Limits(cpu=1, memory=MI))
    assert drv.stats("t").cpu_seconds == 0.0  # missing stat files read as 0
    (tmp_path / "cpuacct/p/t/cpuacct.usage").write_text("2500000000\n")
    (tmp_path / "memory/p/t/memory.usage_in_bytes").write_text("1048576\n")
    (tmp_path / "memory/p/t/memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
    )
    (tmp_path / "memory/p/t/memory.max_usage_in_bytes").write_text("2097152\n")
    (tmp_path / "pids/p/t/pids.events").write_text("max 5\n")
    st = drv.stats("t")
    assert st.cpu_seconds == pytest.approx(2.5)
    assert st.memory_bytes == MI
    assert st.oom_kills == 2
    assert (st.memory_peak_bytes, st.pids_limit_hits) == (2 * MI, 5)


def test_v1_oom_fallback_to_failcnt(tmp_path: Path) -> None:
    drv = CgroupV1(str(make_v1(tmp_path)), "p")
    drv.create("t", Limits(cpu=1, memory=MI))
    (tmp_path / "memory/p/t/memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    (tmp_path / "memory/p/t/memory.failcnt").write_text("0\n")
    assert drv.stats("t").oom_kills == 0
    (tmp_path / "memory/p/t/memory.failcnt").write_text("17\n")
    assert drv.stats("t").oom_kills == 1


def test_v1_pids_remove_busy_and_list(tmp_path: Path) -> None:
    drv = CgroupV1(str(make_v1(tmp_path)), "p")
    drv.create("a", Limits(cpu=1, memory=MI))
    drv.create("b", Limits(cpu=1, memory=MI))
    (tmp_path / "memory/p/a/cgroup.procs").write_text("123\n456\n")
    (tmp_path / "pids/p/a/cgroup.procs").write_text("456\n789\n")
    assert drv.pids("a") == [123, 456, 789]
    assert drv.list() == ["a", "b"]
    assert drv.remove("a") is False
    assert drv.exists("a")
    (tmp_path / "memory/p/a/cgroup.procs").write_text("")
    (tmp_path / "pids/p/a/cgroup.procs").write_text("")
    assert drv.remove("a") is True
    assert not drv.exists("a")
    assert all(not (tmp_path / c / "p/a").exists() for c in V1_DIRS)
    assert drv.list() == ["b"]
    assert drv.remove("never-created") is True


def test_v1_kill_sigkill_freezes_and_thaws(tmp_path: Path) -> None:
    drv = CgroupV1(str(make_v1(tmp_path)), "p")
    drv.create("t", Limits(cpu=1, memory=MI))
    child = subprocess.Popen(["sleep", "100"])
    try:
        (tmp_path / "memory/p/t/cgroup.procs").write_text(f"{child.pid}\n")
        drv.kill("t", signal.SIGKILL)
        assert child.wait(timeout=5) == -signal.SIGKILL
        assert read(tmp_path / "freezer/p/t/freezer.state") == "THAWED"
    finally:
        child.kill()
        child.wait()


def test_write_error_names_file(tmp_path: Path) -> None:
    drv = CgroupV1(str(make_v1(tmp_path)), "p")
    drv.create("t", Limits(cpu=1, memory=MI))
    (tmp_path / "pids/p/t/pids.max").unlink()
    (tmp_path / "pids/p/t/pids.max").mkdir()  # writing to a directory fails
    with pytest.raises(CgroupError, match=r"pids\.max"):
        drv.create("t", Limits(cpu=1, memory=MI))


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../x", "a..b", "_borglet"])
def test_name_validation(tmp_path: Path, bad: str) -> None:
    v1 = CgroupV1(str(make_v1(tmp_path / "v1")), "p")
    v2 = CgroupV2(str(make_v2(tmp_path / "v2")), "p")
    for drv in (v1, v2):
        with pytest.raises(CgroupError):
            drv.create(bad, Limits(cpu=1, memory=MI))
        with pytest.raises(CgroupError):
            drv.procs_files(bad)


def test_parent_validation(tmp_path: Path) -> None:
    with pytest.raises(CgroupError):
        CgroupV2(str(tmp_path), "borgcell/../etc")


# --- v2 -----------------------------------------------------------------------------------


def test_v2_setup_enables_controllers_down_the_path(tmp_path: Path) -> None:
    root = make_v2(tmp_path)
    drv = CgroupV2(str(root), "borgcell/m1")
    drv.setup()
    assert (root / "borgcell/m1").is_dir()
    assert read(root / "cgroup.subtree_control") == "+cpu +memory +pids"
    assert read(root / "borgcell/cgroup.subtree_control") == "+cpu +memory +pids"
    assert read(root / "borgcell/m1/cgroup.subtree_control") == "+cpu +memory +pids"


def test_v2_create_writes_limits(tmp_path: Path) -> None:
    root = make_v2(tmp_path)
    drv = CgroupV2(str(root), "borgcell/m1")
    drv.setup()
    drv.create("hello.0.ab12cd", Limits(cpu=0.5, memory=64 * MI, pids=50))
    d = root / "borgcell/m1/hello.0.ab12cd"
    assert read(d / "cpu.max") == "50000 100000"
    assert read(d / "cpu.weight") == "50"
    assert read(d / "memory.max") == str(64 * MI)
    assert read(d / "memory.swap.max") == "0"
    assert read(d / "pids.max") == "50"
    assert drv.procs_files("hello.0.ab12cd") == [str(d / "cgroup.procs")]
    drv.create("unlimited", Limits(cpu=0, memory=0))
    assert read(root / "borgcell/m1/unlimited/cpu.max") == "max 100000"
    assert read(root / "borgcell/m1/unlimited/memory.max") == "max"
    assert read(root / "borgcell/m1/unlimited/cpu.weight") == "1"
    assert drv.list() == ["hello.0.ab12cd", "unlimited"]


def test_v2_with_a_controller_subset_writes_only_those_limits(tmp_path: Path) -> None:
    """The subset mode the real-cgroup2 test uses on hybrid hosts (see test_cgroup2_mount)."""
    root = make_v2(tmp_path)
    drv = CgroupV2(str(root), "p", controllers=("pids",))
    drv.setup()
    assert read(root / "cgroup.subtree_control") == "+pids"
    drv.create("t", Limits(cpu=0.5, memory=MI, pids=7))
    d = root / "p/t"
    assert read(d / "pids.max") == "7"
    assert not (d / "cpu.max").exists()
    assert not (d / "memory.max").exists()
    with pytest.raises(CgroupError, match="unknown v2 controllers"):
        CgroupV2(str(root), "p", controllers=("cpu", "io"))


def test_v2_stats(tmp_path: Path) -> None:
    drv = CgroupV2(str(make_v2(tmp_path)), "p")
    drv.setup()
    drv.create("t", Limits(cpu=1, memory=MI))
    assert drv.stats("t").oom_kills == 0
    d = tmp_path / "p/t"
    (d / "cpu.stat").write_text(
        "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"
        "nr_periods 10\nnr_throttled 3\nthrottled_usec 20000\n"
    )
    (d / "memory.current").write_text("4096\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    (d / "memory.peak").write_text("8192\n")
    (d / "pids.events").write_text("max 3\n")
    st = drv.stats("t")
    assert st.cpu_seconds == pytest.approx(1.5)
    assert st.memory_bytes == 4096
    assert st.oom_kills == 1
    assert (st.memory_peak_bytes, st.pids_limit_hits) == (8192, 3)


def test_v2_kill_uses_cgroup_kill(tmp_path: Path) -> None:
    drv = CgroupV2(str(make_v2(tmp_path)), "p")
    drv.setup()
    drv.create("t", Limits(cpu=1, memory=MI))
    (tmp_path / "p/t/cgroup.kill").write_text("")
    drv.kill("t", signal.SIGKILL)
    assert read(tmp_path / "p/t/cgroup.kill") == "1"


def test_v2_kill_signals_pids(tmp_path: Path) -> None:
    drv = CgroupV2(str(make_v2(tmp_path)), "p")
    drv.setup()
    drv.create("t", Limits(cpu=1, memory=MI))
    child = subprocess.Popen(["sleep", "100"])
    try:
        (tmp_path / "p/t/cgroup.procs").write_text(f"{child.pid}\n")
        assert drv.pids("t") == [child.pid]
        drv.kill("t", signal.SIGTERM)
        assert child.wait(timeout=5) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()


def test_v2_remove_and_exists(tmp_path: Path) -> None:
    drv = CgroupV2(str(make_v2(tmp_path)), "p")
    drv.setup()
    drv.create("t", Limits(cpu=1, memory=MI))
    (tmp_path / "p/t/cgroup.procs").write_text("1\n")
    assert drv.remove("t") is False
    (tmp_path / "p/t/cgroup.procs").write_text("")
    assert drv.remove("t") is True
    assert not drv.exists("t")
    assert drv.list() == []


# --- detect -------------------------------------------------------------------------------


def test_detect_v2(tmp_path: Path) -> None:
    drv = detect(str(make_v2(tmp_path)), "borgcell")
    assert isinstance(drv, CgroupV2) and drv.version == 2


def test_detect_v2_without_needed_controllers_is_none(tmp_path: Path) -> None:
    assert detect(str(make_v2(tmp_path, "cpuset io")), "borgcell") is None


def test_detect_v1(tmp_path: Path) -> None:
    make_v1(tmp_path)
    (tmp_path / "unified").mkdir()  # hybrid host: an empty cgroup2 does not make it v2
    (tmp_path / "unified/cgroup.controllers").write_text("")
    drv = detect(str(tmp_path), "borgcell")
    assert isinstance(drv, CgroupV1) and drv.version == 1


def test_detect_none(tmp_path: Path) -> None:
    assert detect(str(tmp_path), "borgcell") is None
    make_v1(tmp_path, ("cpu", "memory"))  # no pids
    assert detect(str(tmp_path), "borgcell") is None


# --- shim (no privileges needed: runs as the current user, no cgroup) ----------------------


def _run_shim(
    tmp_path: Path, spec: dict[str, object]
) -> tuple[str, dict[str, str], subprocess.CompletedProcess[bytes]]:
    """Run the shim to completion: (its ready line, its status file, the process)."""
    control = tmp_path / "ctl"
    control.mkdir(mode=0o700)
    fd = os.open(control / "spec", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(marshal.dumps(spec))
    r, w = os.pipe()
    p = subprocess.run(
        [sys.executable, "-I", "-S", SHIM_PATH, str(control), str(w)],
        pass_fds=(w,),
        capture_output=True,
        env={},
        timeout=10,
    )
    os.close(w)
    with os.fdopen(r) as f:
        ready = f.read().strip()
    status = dict(
        line.split(" ", 1) for line in (control / "status").read_text().splitlines() if line
    )
    return ready, status, p


def _base_spec(tmp_path: Path, argv: list[str], procs: list[str]) -> dict[str, object]:
    return {
        "argv": argv,
        "env": {"PATH": "/usr/bin:/bin", "X": "1"},
        "cwd": str(tmp_path),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "procs_files": procs,
        "rlimits": {"nofile": 256},
        "stdout": str(tmp_path / "stdout"),
        "stderr": str(tmp_path / "stderr"),
        "log_max_size": 0,
        "log_keep": 0,
    }


def test_shim_joins_cgroup_execs_and_records_exit(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    script = 'echo "$$ $X $(pwd) $(ulimit -n) $(umask)"; echo err >&2; exit 7'
    ready, status, p = _run_shim(tmp_path, _base_spec(tmp_path, ["sh", "-c", script], [str(procs)]))
    assert p.returncode == 0, p.stderr
    pid, x, cwd, nofile, umask = (tmp_path / "stdout").read_text().split()
    assert ready == f"ok {pid}"
    assert procs.read_text() == pid  # the task joined before exec; the shim did not
    assert (x, cwd, nofile, umask) == ("1", str(tmp_path), "256", "0022")
    assert (tmp_path / "stderr").read_text() == "err\n"
    assert status == {"code": "7", "signal": "0"}
    pid_file = (tmp_path / "ctl" / "pid").read_text().split()
    assert pid_file[0] == pid


def test_shim_records_death_by_signal(tmp_path: Path) -> None:
    _, status, _ = _run_shim(tmp_path, _base_spec(tmp_path, ["sh", "-c", "kill -9 $$"], []))
    assert status == {"code": "137", "signal": "9"}


def test_shim_not_found_is_127_and_reported_at_once(tmp_path: Path) -> None:
    ready, status, _ = _run_shim(tmp_path, _base_spec(tmp_path, ["no-such-command-xyz"], []))
    assert ready == "err 127 exec: not found"
    assert status == {"code": "127", "signal": "0", "error": "exec: not found"}


def test_shim_other_failure_is_126(tmp_path: Path) -> None:
    spec = _base_spec(tmp_path, ["true"], [str(tmp_path / "no/such/procs")])
    ready, status, _ = _run_shim(tmp_path, spec)
    assert ready.startswith("err 126 cgroup: ")
    assert status["code"] == "126"


def test_shim_rotates_logs_by_size(tmp_path: Path) -> None:
    spec = _base_spec(tmp_path, ["sh", "-c", "head -c 300000 /dev/zero"], [])
    spec.update(log_max_size=100_000, log_keep=2)
    _, status, _ = _run_shim(tmp_path, spec)
    assert status["code"] == "0"
    sizes = {f: (tmp_path / f).stat().st_size for f in ("stdout", "stdout.1", "stdout.2")}
    assert sizes["stdout.1"] == sizes["stdout.2"] == 100_000
    assert sizes["stdout"] <= 100_000
    assert not (tmp_path / "stdout.3").exists()
