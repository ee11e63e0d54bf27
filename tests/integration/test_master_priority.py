"""A master's weight on its machine (borgmaster/priority.py, RaftTuning): a replica that
leads its own session runs that session at nice -10; its Raft thread is ordinary (nice -10)
unless `--raft-realtime` makes it SCHED_RR, which its forked children do not inherit.
Real processes; needs root (CAP_SYS_NICE), as CI has."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from tests.cluster import Cell, Proc, add_master_with_args, free_port, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_SYS_NICE)")


def policies(p: Proc) -> list[int]:
    """The scheduling policy of every thread of `p` (SCHED_RESET_ON_FORK masked off)."""
    assert p.popen is not None
    out = []
    for tid in os.listdir(f"/proc/{p.popen.pid}/task"):
        try:
            out.append(os.sched_getscheduler(int(tid)) & ~os.SCHED_RESET_ON_FORK)
        except OSError:
            continue  # a thread that ended meanwhile
    return out


def autogroup_nice(p: Proc) -> int:
    assert p.popen is not None
    with open(f"/proc/{p.popen.pid}/autogroup") as f:
        return int(f.read().split()[-1])


@pytest.fixture
def master(request: pytest.FixtureRequest) -> Iterator[Proc]:
    """One replica (a cell of its own) run with the test's `borgmaster run` flags."""
    with contextlib.closing(Cell()) as cell:
        m = add_master_with_args(cell, 0, f"127.0.0.1:{free_port()}", [], extra=request.param)
        wait_for(lambda: "Raft thread" in m.log(), 20, what="its Raft thread set up")
        yield m


@pytest.mark.parametrize("master", [[]], indirect=True)
def test_a_master_weighs_its_session_and_keeps_its_raft_thread_ordinary(master: Proc) -> None:
    with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
        if f.read().strip() != "1":
            pytest.skip("autogroup scheduling is off on this kernel")
    m = master
    assert "its scheduling group) runs at nice -10" in m.log()
    assert autogroup_nice(m) == -10
    assert os.SCHED_RR not in policies(m)


@pytest.mark.parametrize("master", [["--raft-realtime"]], indirect=True)
def test_raft_realtime_runs_only_the_raft_thread_sched_rr(master: Proc) -> None:
    m = master
    assert "Raft thread runs real-time (SCHED_RR 1)" in m.log()
    assert policies(m).count(os.SCHED_RR) == 1  # the tick thread; its helpers stay ordinary
