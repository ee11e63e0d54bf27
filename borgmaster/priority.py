"""The master's weight against the rest of its machine (the Borglet and its tasks).

A master that cannot run for longer than an election timeout looks dead to its peers. On Linux
with autogroup scheduling (the default of most distributions), each session is one scheduling
group of weight 1024 whatever the nice values inside it: the Raft thread at nice -10 wins only
against the master's own threads, while the master as a whole weighs what one busy shell, the
Borglet, or the `borgcell` cgroup of all tasks weighs. On the dev cell's 2 cores during a
5,000-task start, the leader's Raft thread waited up to 0.5 s for a CPU with nice -10.

So a master that leads its own session (a systemd service, `tests/cluster.py`, any supervisor
that calls setsid) gives that session a nice value too (`/proc/self/autogroup`, CAP_SYS_NICE
for a negative one). Only its own session: a master started from a shell shares the shell's
group, and renicing it would renice the user's terminal with it (there the host's own means
apply: systemd's `CPUWeight=`, a cgroup). Where autogroup does not apply (the master in a cpu
cgroup of its own, or autogroup off), the file changes nothing and nothing is written.
"""

from __future__ import annotations

import os

AUTOGROUP = "/proc/self/autogroup"
AUTOGROUP_ENABLED = "/proc/sys/kernel/sched_autogroup_enabled"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def weigh_session(nice: int) -> str:
    """Give this process's autogroup `nice` when it leads its own session; returns a line for
    the log saying what was done or why not ("" when `nice` is 0: left alone)."""
    if nice == 0:
        return ""
    if _read(AUTOGROUP_ENABLED) != "1":
        return "autogroup scheduling is off: the master's weight is its cgroup's"
    current = _read(AUTOGROUP)  # e.g. "/autogroup-42 nice 0"
    if not current:
        return "no /proc/self/autogroup: the master's weight is its cgroup's"
    if os.getsid(0) != os.getpid():
        return (
            "the master shares its session (and so its scheduling group) with its parent: "
            "left at its weight (give a busy master a session or a cgroup of its own)"
        )
    try:
        if int(current.rsplit(" ", 1)[1]) <= nice:
            return ""
    except (IndexError, ValueError):
        pass
    try:
        with open(AUTOGROUP, "w") as f:
            f.write(str(nice))
    except OSError as e:
        return f"the master's session keeps its weight (nice {nice} refused: {e.strerror})"
    return f"the master's session (its scheduling group) runs at nice {nice}"
