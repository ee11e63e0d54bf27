"""Cgroup v1 and v2 drivers behind one interface: create, limit, stats, kill, remove.

Pure file I/O on a cgroupfs tree. The same code runs against a fake tree made of plain
directories and files (unit tests): writes open files with ``"w"`` (creating them in a fake
tree), reads of missing stat files return 0, and removal of a fake cgroup deletes its plain
files first (on a real cgroupfs the control files vanish with ``rmdir``).

Layout: every task cgroup is ``<root>/<parent>/<name>`` (v2), or
``<root>/<controller>/<parent>/<name>`` for each v1 controller we use.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

log = logging.getLogger(__name__)

CPU_PERIOD_US = 100_000
"""CFS period: 100 ms, the kernel default; quota = cores * period."""
MIN_QUOTA_US = 1_000
"""The kernel rejects quotas below 1 ms."""
V2_CONTROLLERS = ("cpu", "memory", "pids")
V2_LEAF = "_borglet"
"""Leaf cgroup that processes found in one of our own v2 cgroups are moved into (see setup)."""
SUPERVISORS = "_supervisors"
"""Leaf cgroup under the parent that holds the tasks' shims (their supervisors): so a start
storm of thousands of interpreters competes for the CPU inside the Borglet's parent, beside
its tasks, instead of beside everything else on the host (a co-located master among them)."""
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "freezer", "devices")
V1_REQUIRED = ("cpu", "cpuacct", "memory", "pids")

_POLL_S = 0.005
_FREEZE_TIMEOUT_S = 2.0


class CgroupError(Exception):
    """A cgroup operation failed; the message names the file or directory involved."""


@dataclass
class Limits:
    """Resource limits of one task.

    ``cpu`` is in cores (0 = no quota), ``memory`` in bytes (0 = no limit), ``pids`` the most
    processes/threads the task may have.
    """

    cpu: float
    memory: int
    pids: int = 4096
    # Device nodes the task may not open, as ("c"|"b", major, minor): the GPUs that are not
    # its own (borglet/devices.py). v1 writes them to devices.deny; v2 would need an eBPF
    # device program, which this runtime does not load (see CgroupV2.create).
    deny_devices: tuple[tuple[str, int, int], ...] = ()

    def cpu_quota_us(self) -> int | None:
        """CFS quota for one 100 ms period, or None for no quota."""
        if self.cpu <= 0:
            return None
        return max(MIN_QUOTA_US, round(self.cpu * CPU_PERIOD_US))

    def cpu_shares(self) -> int:
        """v1 cpu.shares: 1024 per core, at least 2 (the kernel minimum)."""
        return max(2, int(self.cpu * 1024))

    def cpu_weight(self) -> int:
        """v2 cpu.weight with the same ratio as shares: default 100 == 1 core == 1024 shares."""
        return max(1, min(10_000, round(self.cpu * 100)))


@dataclass
class CgroupStats:
    """Usage counters of one task cgroup."""

    cpu_seconds: float
    memory_bytes: int
    oom_kills: int
    memory_peak_bytes: int = 0
    pids_limit_hits: int = 0
    """Times a fork failed because the cgroup was at pids.max (pids.events "max")."""


def validate_name(name: str) -> None:
    """Task cgroup names are one path component, so a name can never escape the parent."""
    if (
        not name
        or "/" in name
        or "\0" in name
        or name in (".", "..")
        or ".." in name
        or name in (V2_LEAF, SUPERVISORS)
    ):
        raise CgroupError(f"invalid cgroup name {name!r}: must be one path component")


def _validate_parent(parent: str) -> str:
    parts = [p for p in parent.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") or "\0" in p for p in parts):
        raise CgroupError(f"invalid cgroup parent {parent!r}")
    return "/".join(parts)


def _write(path: str, value: str) -> None:
    """Write one value to a control file; a failure names the file (cgroup errors are terse)."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise CgroupError(f"cannot write {value!r} to {path}: {e.strerror or e}") from e


def _read(path: str) -> str:
    """Contents of a control file, '' when it is missing (fake trees, disabled controllers)."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise CgroupError(f"cannot read {path}: {e.strerror or e}") from e


def _read_int(path: str) -> int:
    text = _read(path).strip()
    if not text or text == "max":
        return 0
    try:
        return int(text.split()[0])
    except ValueError as e:
        raise CgroupError(f"unexpected contents in {path}: {text[:80]!r}") from e


def _read_keyed(path: str) -> dict[str, int]:
    """Parse 'key value' lines (memory.events, cpu.stat, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in _read(path).splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


def _read_pids(path: str) -> list[int]:
    return [int(x) for x in _read(path).split() if x.strip().isdigit()]


def _mkdir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CgroupError(f"cannot create cgroup {path}: {e.strerror or e}") from e


def _unescape_mount(s: str) -> str:
    """/proc/self/mounts escapes space, tab, newline and backslash as octal."""
    for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        s = s.replace(esc, ch)
    return s


def on_cgroupfs(path: str) -> bool:
    """Whether ``path`` lies on a real cgroup/cgroup2 mount (False for a fake tree)."""
    path = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mnt = _unescape_mount(fields[1])
                prefix = mnt.rstrip("/") + "/"
                if (path == mnt or path.startswith(prefix) or mnt == "/") and len(mnt) >= len(best):
                    best, fstype = mnt, fields[2]
    except OSError:
        return False
    return fstype in ("cgroup", "cgroup2")


def _signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class CgroupDriver(ABC):
    """One interface over cgroup v1 and v2: the runtime never looks at the version."""

    version: int

    def __init__(self, root: str, parent: str) -> None:
        self.root = root.rstrip("/") or "/"
        self.parent = _validate_parent(parent)

    @abstractmethod
    def setup(self) -> None:
        """Create the parent cgroup (idempotent)."""

    @abstractmethod
    def create(self, name: str, limits: Limits) -> None:
        """Create (or update) a task cgroup and write its limits."""

    @abstractmethod
    def procs_files(self, name: str) -> list[str]:
        """cgroup.procs files a process writes its pid into to join the task cgroup."""

    @abstractmethod
    def pids(self, name: str) -> list[int]:
        """Every process in the task cgroup."""

    @abstractmethod
    def stats(self, name: str) -> CgroupStats:
        """CPU seconds, current memory and OOM kills of the task cgroup."""

    @abstractmethod
    def kill(self, name: str, sig: int) -> None:
        """Signal every process in the task cgroup."""

    @abstractmethod
    def thaw(self, name: str) -> None:
        """Unfreeze the task cgroup: a Borglet killed between the freeze and the thaw of a
        SIGKILL leaves it frozen, and nothing else ever freezes it."""

    @abstractmethod
    def _dirs(self, name: str) -> list[str]:
        """The task cgroup's directory in every hierarchy."""

    @abstractmethod
    def _parent_dirs(self) -> list[str]:
        """The parent's directory in every hierarchy."""

    def remove(self, name: str) -> bool:
        """Remove the task cgroup everywhere; False while it still has processes."""
        validate_name(name)
        ok = True
        for d in self._dirs(name):
            ok = self._rmdir_tree(d) and ok
        return ok

    @abstractmethod
    def supervisor_procs_files(self) -> list[str]:
        """cgroup.procs files that put a shim into the parent's supervisors leaf (on v1 the
        cpu hierarchy only: its memory is never charged to a task either way)."""

    def join_supervisors(self, pid: int) -> None:
        """Move a just-spawned shim into the supervisors leaf; nothing when it already exited."""
        for f in self.supervisor_procs_files():
            try:
                _write(f, str(pid))
            except CgroupError as e:
                if isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.ESRCH:
                    return
                raise

    def list(self) -> list[str]:
        """Names of the task cgroups under the parent."""
        names: set[str] = set()
        for d in self._parent_dirs():
            try:
                with os.scandir(d) as it:
                    names.update(e.name for e in it if e.is_dir(follow_symlinks=False))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise CgroupError(f"cannot list {d}: {e.strerror or e}") from e
        names.discard(V2_LEAF)
        names.discard(SUPERVISORS)
        return sorted(names)

    def remove_parent(self, shims_timeout: float = 5.0) -> bool:
        """Remove the (empty) parent cgroup in every hierarchy, e.g. when the Borglet shuts
        down for good or a test cleans up; False while task cgroups are still busy. Shims
        outlive their task by a moment (they record how it ended), so their leaf is given
        up to `shims_timeout` to empty."""
        deadline = time.monotonic() + shims_timeout
        files = self.supervisor_procs_files()
        while any(_read_pids(f) for f in files) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        ok = True
        for d in self._parent_dirs():
            ok = self._rmdir_tree(d) and ok
        return ok

    def exists(self, name: str) -> bool:
        """Whether the task cgroup exists in any hierarchy."""
        validate_name(name)
        return any(os.path.isdir(d) for d in self._dirs(name))

    def _rmdir_tree(self, path: str) -> bool:
        """rmdir a cgroup and any child cgroups, deepest first.

        On a fake tree (plain directories) the plain files are deleted first, but only once
        cgroup.procs is empty, so tests see the same "busy" answer as a real cgroupfs.
        """
        if not os.path.isdir(path):
            return True
        fake = not on_cgroupfs(path)
        for dirpath, dirnames, filenames in os.walk(path, topdown=False):
            if fake:
                if _read_pids(os.path.join(dirpath, "cgroup.procs")):
                    return False
                for fn in filenames:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(dirpath, fn))
            del dirnames
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    return False
                raise CgroupError(f"cannot remove cgroup {dirpath}: {e.strerror or e}") from e
        return True


class CgroupV1(CgroupDriver):
    """Legacy hierarchies: one mount per controller (cpu, cpuacct, memory, pids, freezer).

    ``cpu`` and ``cpuacct`` may be co-mounted as ``cpu,cpuacct``; each distinct hierarchy is
    written once. The freezer is optional (without it SIGKILL is sent without freezing).
    """

    version = 1

    def __init__(self, root: str, parent: str) -> None:
        super().__init__(root, parent)
        self.controllers: dict[str, str] = {}
        for c in V1_CONTROLLERS:
            d = _v1_controller_dir(self.root, c)
            if d is not None:
                self.controllers[c] = d
        missing = [c for c in V1_REQUIRED if c not in self.controllers]
        if missing:
            raise CgroupError(f"cgroup v1 controllers missing under {self.root}: {missing}")
        # Distinct hierarchies in a stable order (co-mounted cpu,cpuacct counted once).
        self._hier: list[str] = []
        seen: set[str] = set()
        for c in V1_CONTROLLERS:
            d = self.controllers.get(c)
            if d is not None and os.path.realpath(d) not in seen:
                seen.add(os.path.realpath(d))
                self._hier.append(d)

    def _cg(self, controller: str, name: str) -> str:
        return os.path.join(self.controllers[controller], self.parent, name)

    def _dirs(self, name: str) -> list[str]:
        return [os.path.join(h, self.parent, name) for h in self._hier]

    def _parent_dirs(self) -> list[str]:
        return [os.path.join(h, self.parent) for h in self._hier]

    def setup(self) -> None:
        for h in self._hier:
            _mkdir(os.path.join(h, self.parent))
        _mkdir(self._cg("cpu", SUPERVISORS))

    def supervisor_procs_files(self) -> list[str]:
        return [os.path.join(self._cg("cpu", SUPERVISORS), "cgroup.procs")]

    def create(self, name: str, limits: Limits) -> None:
        validate_name(name)
        for d in self._dirs(name):
            _mkdir(d)
        cpu = self._cg("cpu", name)
        quota = limits.cpu_quota_us()
        _write(os.path.join(cpu, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
        _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(quota if quota is not None else -1))
        _write(os.path.join(cpu, "cpu.shares"), str(limits.cpu_shares()))
        self._set_memory(self._cg("memory", name), limits.memory)
        _write(os.path.join(self._cg("pids", name), "pids.max"), str(limits.pids))
        if limits.deny_devices:
            if "devices" not in self.controllers:
                raise CgroupError(
                    f"no v1 devices controller under {self.root}: cannot keep the task off "
                    "other tasks' GPUs"
                )
            deny = os.path.join(self._cg("devices", name), "devices.deny")
            for kind, major, minor in limits.deny_devices:
                _write(deny, f"{kind} {major}:{minor} rwm")

    def _set_memory(self, mem: str, memory: int) -> None:
        """memory.limit_in_bytes, then memsw (= the same value: no swap) where present.

        The kernel requires limit <= memsw at all times, so when raising an existing limit the
        first write fails with EINVAL; then memsw is raised first and the limit after it.
        """
        value = str(memory) if memory > 0 else "-1"
        limit_f = os.path.join(mem, "memory.limit_in_bytes")
        memsw_f = os.path.join(mem, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw_f) or not on_cgroupfs(mem)
        try:
            _write(limit_f, value)
        except CgroupError as e:
            cause = e.__cause__
            if not (has_memsw and isinstance(cause, OSError) and cause.errno == errno.EINVAL):
                raise
            _write(memsw_f, value)
            _write(limit_f, value)
            return
        if has_memsw:
            _write(memsw_f, value)

    def procs_files(self, name: str) -> list[str]:
        validate_name(name)
        return [os.path.join(d, "cgroup.procs") for d in self._dirs(name)]

    def pids(self, name: str) -> list[int]:
        validate_name(name)
        out: set[int] = set()
        for d in self._dirs(name):
            out.update(_read_pids(os.path.join(d, "cgroup.procs")))
        return sorted(out)

    def stats(self, name: str) -> CgroupStats:
        validate_name(name)
        cpu_ns = _read_int(os.path.join(self._cg("cpuacct", name), "cpuacct.usage"))
        mem = self._cg("memory", name)
        usage = _read_int(os.path.join(mem, "memory.usage_in_bytes"))
        oom = _read_keyed(os.path.join(mem, "memory.oom_control"))
        if "oom_kill" in oom:
            kills = oom["oom_kill"]
        else:  # kernels before 4.13 have no counter: any failure to charge counts as one
            kills = 1 if _read_int(os.path.join(mem, "memory.failcnt")) > 0 else 0
        pids_events = _read_keyed(os.path.join(self._cg("pids", name), "pids.events"))
        return CgroupStats(
            cpu_seconds=cpu_ns / 1e9,
            memory_bytes=usage,
            oom_kills=kills,
            memory_peak_bytes=_read_int(os.path.join(mem, "memory.max_usage_in_bytes")),
            pids_limit_hits=pids_events.get("max", 0),
        )

    def kill(self, name: str, sig: int) -> None:
        """SIGKILL freezes first so no process can fork a child we would miss, then thaws."""
        validate_name(name)
        freezer = self._cg("freezer", name) if "freezer" in self.controllers else None
        if sig != signal.SIGKILL or freezer is None or not os.path.isdir(freezer):
            _signal_pids(self.pids(name), sig)
            return
        state = os.path.join(freezer, "freezer.state")
        _write(state, "FROZEN")
        try:
            deadline = time.monotonic() + _FREEZE_TIMEOUT_S
            while _read(state).strip() not in ("FROZEN", "") and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            _signal_pids(self.pids(name), sig)
        finally:
            _write(state, "THAWED")

    def thaw(self, name: str) -> None:
        validate_name(name)
        if "freezer" not in self.controllers:
            return
        state = os.path.join(self._cg("freezer", name), "freezer.state")
        if os.path.exists(state) and _read(state).strip() != "THAWED":
            _write(state, "THAWED")


def _v1_controller_dir(root: str, controller: str) -> str | None:
    """Where a v1 controller is mounted: root/<c>, or a co-mount like root/cpu,cpuacct."""
    direct = os.path.join(root, controller)
    if os.path.isdir(direct):
        return direct
    if controller in ("cpu", "cpuacct"):
        for combo in ("cpu,cpuacct", "cpuacct,cpu"):
            d = os.path.join(root, combo)
            if os.path.isdir(d):
                return d
    return None


class CgroupV2(CgroupDriver):
    """The unified hierarchy: one directory per task under ``<root>/<parent>``."""

    version = 2

    def __init__(
        self, root: str, parent: str, controllers: tuple[str, ...] = V2_CONTROLLERS
    ) -> None:
        """``controllers``: the ones this driver enables and writes limits for. `detect` only
        picks v2 when all of cpu, memory and pids are available, so production always passes
        the default; a subset serves the tests that exercise the driver on a real cgroup2
        mount whose controllers are bound to v1 hierarchies (hybrid hosts, like CI)."""
        super().__init__(root, parent)
        unknown = set(controllers) - set(V2_CONTROLLERS)
        if unknown:
            raise CgroupError(f"unknown v2 controllers {sorted(unknown)}")
        self.controllers = tuple(c for c in V2_CONTROLLERS if c in controllers)
        self._warned_devices = False

    def _dir(self, name: str) -> str:
        return os.path.join(self.root, self.parent, name)

    def _dirs(self, name: str) -> list[str]:
        return [self._dir(name)]

    def _parent_dirs(self) -> list[str]:
        return [os.path.join(self.root, self.parent)]

    def setup(self) -> None:
        """Create the parent and enable cpu, memory and pids for children all the way down.

        The "no internal processes" rule makes enabling controllers in a cgroup's
        subtree_control fail with EBUSY while that cgroup holds processes (typical when the
        Borglet itself was started inside the parent, e.g. by a systemd unit with
        Delegate=yes). Only for the cgroups of our own parent path (never the root or anything
        above it) we then move those processes into a ``_borglet`` leaf child and retry, the
        usual 'init' leaf trick. Anywhere else EBUSY is an error.
        """
        _mkdir(os.path.join(self.root, self.parent))
        want = " ".join(f"+{c}" for c in self.controllers)
        path = self.root
        parts = self.parent.split("/")
        for i in range(len(parts) + 1):
            sc = os.path.join(path, "cgroup.subtree_control")
            enabled = set(_read(sc).split())
            if want and not set(self.controllers) <= enabled:
                try:
                    _write(sc, want)
                except CgroupError as e:
                    cause = e.__cause__
                    ours = i > 0
                    if not (ours and isinstance(cause, OSError) and cause.errno == errno.EBUSY):
                        raise
                    self._evacuate(path)
                    _write(sc, want)
            if i < len(parts):
                path = os.path.join(path, parts[i])
        _mkdir(self._dir(SUPERVISORS))

    def supervisor_procs_files(self) -> list[str]:
        return [os.path.join(self._dir(SUPERVISORS), "cgroup.procs")]

    def _evacuate(self, path: str) -> None:
        leaf = os.path.join(path, V2_LEAF)
        _mkdir(leaf)
        log.warning("moving processes of %s into %s to enable controllers", path, leaf)
        for pid in _read_pids(os.path.join(path, "cgroup.procs")):
            try:
                _write(os.path.join(leaf, "cgroup.procs"), str(pid))
            except CgroupError as e:
                if not (isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.ESRCH):
                    raise

    def create(self, name: str, limits: Limits) -> None:
        validate_name(name)
        d = self._dir(name)
        _mkdir(d)
        fake = not on_cgroupfs(d)
        if "cpu" in self.controllers:
            quota = limits.cpu_quota_us()
            _write(
                os.path.join(d, "cpu.max"),
                f"{quota if quota is not None else 'max'} {CPU_PERIOD_US}",
            )
            _write(os.path.join(d, "cpu.weight"), str(limits.cpu_weight()))
        if "memory" in self.controllers:
            memory = str(limits.memory) if limits.memory > 0 else "max"
            _write(os.path.join(d, "memory.max"), memory)
            swap = os.path.join(d, "memory.swap.max")
            if fake or os.path.exists(swap):  # absent when swap accounting is off
                _write(swap, "0")
        if "pids" in self.controllers:
            _write(os.path.join(d, "pids.max"), str(limits.pids))
        if limits.deny_devices and not self._warned_devices:
            # v2 has no devices.deny: access is decided by a BPF_PROG_TYPE_CGROUP_DEVICE
            # program attached to the cgroup, which this runtime does not load. Tasks still
            # see only their own GPUs through CUDA_VISIBLE_DEVICES, but nothing stops one
            # that opens /dev/nvidiaN directly.
            self._warned_devices = True
            log.warning(
                "cgroup v2: GPU device isolation needs an eBPF device program (not loaded): "
                "tasks are kept to their GPUs by CUDA_VISIBLE_DEVICES only"
            )

    def procs_files(self, name: str) -> list[str]:
        validate_name(name)
        return [os.path.join(self._dir(name), "cgroup.procs")]

    def pids(self, name: str) -> list[int]:
        validate_name(name)
        return _read_pids(os.path.join(self._dir(name), "cgroup.procs"))

    def stats(self, name: str) -> CgroupStats:
        validate_name(name)
        d = self._dir(name)
        usec = _read_keyed(os.path.join(d, "cpu.stat")).get("usage_usec", 0)
        events = _read_keyed(os.path.join(d, "memory.events"))
        return CgroupStats(
            cpu_seconds=usec / 1e6,
            memory_bytes=_read_int(os.path.join(d, "memory.current")),
            oom_kills=events.get("oom_kill", 0),
            memory_peak_bytes=_read_int(os.path.join(d, "memory.peak")),  # 5.19+
            pids_limit_hits=_read_keyed(os.path.join(d, "pids.events")).get("max", 0),
        )

    def kill(self, name: str, sig: int) -> None:
        """SIGKILL uses cgroup.kill (5.14+), else freeze/kill/thaw via cgroup.freeze."""
        validate_name(name)
        d = self._dir(name)
        if sig != signal.SIGKILL:
            _signal_pids(self.pids(name), sig)
            return
        kill_f = os.path.join(d, "cgroup.kill")
        if os.path.exists(kill_f):
            _write(kill_f, "1")
            return
        freeze_f = os.path.join(d, "cgroup.freeze")
        if not os.path.exists(freeze_f):
            _signal_pids(self.pids(name), sig)
            return
        _write(freeze_f, "1")
        try:
            events = os.path.join(d, "cgroup.events")
            deadline = time.monotonic() + _FREEZE_TIMEOUT_S
            while _read_keyed(events).get("frozen", 1) != 1 and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            _signal_pids(self.pids(name), sig)
        finally:
            _write(freeze_f, "0")

    def thaw(self, name: str) -> None:
        validate_name(name)
        freeze_f = os.path.join(self._dir(name), "cgroup.freeze")
        if os.path.exists(freeze_f) and _read(freeze_f).strip() != "0":
            _write(freeze_f, "0")


def detect(root: str = "/sys/fs/cgroup", parent: str = "borgcell") -> CgroupDriver | None:
    """Pick the driver for this host: pure v2, else v1, else None (no isolation possible).

    v2 only when ``root/cgroup.controllers`` lists cpu, memory and pids (a hybrid host with an
    empty cgroup2 at root/unified is treated as v1).
    """
    controllers = os.path.join(root, "cgroup.controllers")
    if os.path.isfile(controllers):
        if set(V2_CONTROLLERS) <= set(_read(controllers).split()):
            return CgroupV2(root, parent)
        return None
    dirs = [_v1_controller_dir(root, c) for c in V1_REQUIRED]
    if all(d is not None and os.access(d, os.W_OK) for d in dirs):
        return CgroupV1(root, parent)
    return None
