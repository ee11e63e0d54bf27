"""Network partitions of single processes on this machine, without touching anyone else's
traffic: each partitionable process starts inside its own cgroup (v2 hierarchy: the unified
mount of a hybrid host, or /sys/fs/cgroup on a pure v2 host), and a partition is one
iptables rule dropping every packet that process's sockets send (`-m cgroup --path`), which
also stalls what others send it (their packets go unacknowledged). Healing deletes the rule.

Port rules would not do: of each PySyncObj connection only one end is a known port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

from tests.cluster import wait_for

RULE = ["OUTPUT", "-m", "cgroup", "--path", "{path}", "-j", "DROP"]


def v2_root() -> str | None:
    for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        v2 = root.endswith("unified") or os.path.exists(os.path.join(root, "cgroup.controllers"))
        if v2 and os.path.exists(os.path.join(root, "cgroup.procs")) and os.access(root, os.W_OK):
            return root
    return None


def _rule(path: str) -> list[str]:
    return [a.format(path=path) for a in RULE]


def unavailable() -> str | None:
    """Why partitions cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network partitions need root (iptables)"
    if shutil.which("iptables") is None:
        return "iptables not installed (Debian: apt-get install iptables)"
    root = v2_root()
    if root is None:
        return "no writable cgroup v2 hierarchy for iptables' cgroup match"
    probe = f"borgtest-netpart-probe-{os.getpid()}"
    os.makedirs(os.path.join(root, probe), exist_ok=True)
    try:
        r = subprocess.run(["iptables", "-A", *_rule(probe)], capture_output=True, text=True)
        if r.returncode != 0:
            return f"iptables cannot match cgroups here: {r.stderr.strip()[:200]}"
        subprocess.run(["iptables", "-D", *_rule(probe)], capture_output=True)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(root, probe))
    return None


class Partitioner:
    """`wrap` a process's argv so it starts in its own cgroup; `cut`/`heal` it; `close`
    removes every rule and cgroup it made (call it after the processes have exited)."""

    def __init__(self, prefix: str) -> None:
        root = v2_root()
        assert root is not None, "check unavailable() first"
        self.root = root
        self.prefix = prefix
        self.cut_now: set[str] = set()
        self.made: list[str] = []

    def path(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def wrap(self, name: str, argv: list[str]) -> list[str]:
        rel = self.path(name)
        os.makedirs(os.path.join(self.root, rel), exist_ok=True)
        if rel not in self.made:
            self.made.append(rel)
        procs = os.path.join(self.root, rel, "cgroup.procs")
        # sh joins the cgroup, then becomes the program (same pid: signals still reach it).
        return ["sh", "-c", 'echo $$ > "$1" && shift && exec "$@"', "sh", procs, *argv]

    def cut(self, name: str) -> None:
        rel = self.path(name)
        subprocess.run(["iptables", "-A", *_rule(rel)], check=True, capture_output=True)
        self.cut_now.add(rel)

    def heal(self, name: str) -> None:
        self._drop_rules(self.path(name))

    def _drop_rules(self, rel: str) -> None:
        """Delete every rule for `rel` (iptables -D removes one at a time)."""
        while subprocess.run(["iptables", "-D", *_rule(rel)], capture_output=True).returncode == 0:
            pass
        self.cut_now.discard(rel)

    def heal_all(self) -> None:
        for rel in list(self.cut_now):
            self._drop_rules(rel)

    def close(self) -> None:
        """Heal, and remove the cgroups (once their processes are gone: stop them first)."""
        self.heal_all()
        for rel in self.made:
            d = os.path.join(self.root, rel)
            # its processes may still be exiting: retry until the cgroup is empty
            with contextlib.suppress(TimeoutError):
                wait_for(lambda d=d: _removed(d), 10, what=f"{d} removed")


def _removed(d: str) -> bool:
    try:
        os.rmdir(d)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
