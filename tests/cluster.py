"""A real cell for tests: N masters and M Borglets as processes on free loopback ports.

Everything is waited on with a deadline (no fixed sleeps); each process logs to a file that
is printed when a test fails; teardown kills every process and every task cgroup the cell
made, and checks that nothing is left behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psutil

from borglet.runtime.cgroups import detect

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = TypeVar("T")


TEST_RAFT_SECRET = "borgcell-test-raft-secret-0123456789"
"""The Raft secret of every multi-replica cell the tests start (never used outside tests)."""


FREE_PORTS = (10000, 20000)
"""Where test servers' ports come from: below the Borglets' default task range (20000-32000)
and the kernel's ephemeral range (32768+). A port the kernel hands out for "port 0" is an
ephemeral one, which any outgoing connection may take as its source port before a server
restarted on it binds again (seen: a cold-restarted master finding its gRPC port in use)."""
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing on 127.0.0.1 uses now (TCP and UDP), not handed out before by this
    process, outside the ephemeral range."""
    rnd = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        port = rnd.randrange(*FREE_PORTS)
        if port in _handed_out:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # the range is crowded: let the kernel pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    cond: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `cond` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # conditions may fail while processes start
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or cond}: {last_exc}")


def stays(cond: Callable[[], object], seconds: float, interval: float = 0.01) -> bool:
    """Whether `cond` holds at every check for `seconds`: for claims that something does NOT
    happen (no restart, no second start), which no event can be waited on. Polled, so a
    transient violation inside the window fails too, not only one still there at its end."""
    deadline = time.monotonic() + seconds
    while True:
        if not cond():
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(interval)


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: str
    popen: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def stop_all(procs: list[Proc], timeout: float) -> None:
    """SIGTERM to every one at once, then wait for each (SIGKILL what outlives `timeout`)."""
    for p in procs:
        if p.popen is not None and p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        if p.popen is None:
            continue
        try:
            p.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


_IN_PROCESS = threading.Lock()
"""One in-process borgcfg at a time (it borrows this process's stdout and stderr)."""


class Cell:
    """Start with `Cell(tmp_path).start(masters=3, borglets=1)`; always `close()`."""

    def __init__(
        self,
        base: str | None = None,
        prefix: str | None = None,
        tls: bool = False,
        audit: bool = False,
    ) -> None:
        # Task sandboxes must be reachable by the unprivileged task user, so the cell lives in
        # a world-searchable directory (pytest's tmp_path is 0700).
        self.base = tempfile.mkdtemp(prefix="borgcell-test-", dir=base and None)
        os.chmod(self.base, 0o755)
        self.prefix = prefix or f"t{os.getpid()}x{free_port()}"
        self.masters: list[Proc] = []
        self.borglets: list[Proc] = []
        self.hollows: list[Proc] = []
        """`borglet hollow` processes (`add_hollow`): simulated machines, no cgroups."""
        self.tls = tls
        """With TLS every process gets a certificate from the cell's own CA (`cert`), and
        borgcfg acts as `admin` unless a test says otherwise."""
        self._certs: dict[tuple[str, str], str] = {}
        self.audit = audit
        """Each replica writes its audit log to `audit_log(i)`."""

    def audit_log(self, i: int) -> str:
        return os.path.join(self.base, f"m{i}.audit.jsonl")

    def cert(self, role: str, name: str, **kw: Any) -> str:
        """A TLS dir for (role, name) from this cell's CA, made on first use (`kw` as
        borgmaster.ca.issue: hosts, days, not_before)."""
        from borgmaster import ca

        ca_dir = os.path.join(self.base, "tls", "ca")
        if not os.path.exists(os.path.join(ca_dir, "ca.key")):
            ca.init_ca(ca_dir)
        key = (role, name)
        if key not in self._certs or kw:
            out = os.path.join(self.base, "tls", f"{role}-{name}-{len(self._certs)}")
            kw.setdefault("hosts", ("127.0.0.1", "localhost"))
            ca.issue(ca_dir, role, name, out, **kw)
            if kw.get("days") is not None or kw.get("not_before") is not None:
                return out
            self._certs[key] = out
        return self._certs[key]

    # ----- starting -----------------------------------------------------------------------

    def start(
        self,
        masters: int = 1,
        borglets: int = 1,
        borglet_cpu: float = 2.0,
        borglet_memory: str = "2Gi",
        machine_timeout: float = 30.0,
    ) -> Cell:
        rafts = [f"127.0.0.1:{free_port()}" for _ in range(masters)]
        for i in range(masters):
            self.add_master(i, rafts, machine_timeout)
        # The Borglets start beside the masters (they retry until a replica serves them).
        for _ in range(borglets):
            self.add_borglet(cpu=borglet_cpu, memory=borglet_memory)
        self.wait_ready()
        self.wait_machines(borglets)
        return self

    def add_master(self, i: int, rafts: list[str], machine_timeout: float = 30.0) -> Proc:
        peers = [r for j, r in enumerate(rafts) if j != i]
        return add_master_with_args(self, i, rafts[i], peers, machine_timeout=machine_timeout)

    def add_borglet(
        self,
        cpu: float = 2.0,
        memory: str = "2Gi",
        attrs: dict[str, str] | None = None,
        extra: list[str] | None = None,
    ) -> Proc:
        """Start a Borglet; `extra` adds `borglet run` flags. Its data dir is `info["data"]`."""
        i = len(self.borglets)
        name = f"{self.prefix}-b{i}"
        grpc_addr = f"127.0.0.1:{free_port()}"
        http_addr = f"127.0.0.1:{free_port()}"
        data = os.path.join(self.base, f"b{i}")
        argv = [
            sys.executable,
            "-m",
            "borglet.cli",
            "run",
            "--name",
            name,
            "--master",
            self.master_addrs,
            "--grpc",
            grpc_addr,
            "--http",
            http_addr,
            "--data-dir",
            data,
            "--cpu",
            str(cpu),
            "--memory",
            memory,
        ]
        for k, v in (attrs or {}).items():
            argv += ["--attr", f"{k}={v}"]
        argv += extra or []
        if self.tls and "--tls-dir" not in argv:
            argv += ["--tls-dir", self.cert("borglet", name)]
        p = Proc(name, argv, os.path.join(self.base, f"b{i}.log"))
        p.info = {"name": name, "grpc": grpc_addr, "http": http_addr, "data": data}
        p.start()
        self.borglets.append(p)
        return p

    def add_hollow(
        self, count: int, prefix: str = "hollow-", extra: list[str] | None = None
    ) -> Proc:
        """Start `borglet hollow --count COUNT` (on a TLS cell with a hollow certificate named
        after the prefix); `extra` adds flags. Stopped by `close()`."""
        i = len(self.hollows)
        argv = [sys.executable, "-m", "borglet.cli", "hollow", "--count", str(count)]
        argv += ["--master", self.master_addrs, "--name-prefix", prefix, *(extra or [])]
        if self.tls and "--tls-dir" not in argv:
            argv += ["--tls-dir", self.cert("hollow", prefix.rstrip("-._"))]
        p = Proc(f"hollow{i}", argv, os.path.join(self.base, f"hollow{i}.log"))
        p.info = {"prefix": prefix, "count": count}
        p.start()
        self.hollows.append(p)
        return p

    def raft_secret_file(self) -> str:
        """The cell's shared Raft secret (0600), made on first use: replicas with peers
        refuse to start without one."""
        path = os.path.join(self.base, "raft.secret")
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(TEST_RAFT_SECRET + "\n")
        return path

    @property
    def master_addrs(self) -> str:
        return ",".join(m.info["grpc"] for m in self.masters)

    def http_get(self, addr: str, path: str, tls_dir: str | None = None) -> tuple[int, str]:
        """GET over HTTP, or HTTPS on a TLS cell (as `tls_dir`'s holder, default admin)."""
        if self.tls:
            from cfg.tls import TlsDir

            ctx = TlsDir.load(tls_dir or self.cert("admin", "admin")).client_context()
            url, kw = f"https://{addr}{path}", {"context": ctx}
        else:
            url, kw = f"http://{addr}{path}", {}
        try:
            with urllib.request.urlopen(url, timeout=2, **kw) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            for m in self.masters:
                if not m.alive():
                    raise RuntimeError(f"master {m.name} exited:\n{m.log()[-3000:]}")
            return all(self.http_get(m.info["http"], "/readyz")[0] == 200 for m in self.masters)

        wait_for(ready, timeout, what="masters ready")
        # Every replica has announced its gRPC address (so `cell` can list all of them).
        wait_for(
            lambda: len([r for r in self.cell_json() if r["grpc"]]) == len(self.masters),
            timeout,
            what="replicas announced",
        )

    def wait_machines(self, n: int, timeout: float = 30.0) -> None:
        def up() -> bool:
            for b in self.borglets + self.hollows:
                if not b.alive():
                    raise RuntimeError(f"borglet {b.name} exited:\n{b.log()[-3000:]}")
            ms = self.borgcfg_json("machines")
            return len([m for m in ms if m["state"] == "up"]) >= n

        wait_for(up, timeout, what=f"{n} machines up")

    # ----- using it -----------------------------------------------------------------------

    def borgcfg(
        self,
        *args: str,
        master: str | None = None,
        check: bool = False,
        timeout: float = 60,
        tls_dir: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run borgcfg; on a TLS cell as `tls_dir`'s holder (default: an admin), with no
        --user (the certificate says who)."""
        argv = [sys.executable, "-m", "cfg.cli", "--master", master or self.master_addrs]
        if self.tls:
            argv += ["--tls-dir", tls_dir or self.cert("admin", "admin"), *args]
        else:
            argv += ["--user", "tester", *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        if check and r.returncode != 0:
            raise AssertionError(f"borgcfg {' '.join(args)} -> {r.returncode}: {r.stderr}")
        return r

    def borgcfg_json(self, *args: str, master: str | None = None) -> Any:
        """`borgcfg ARGS -o json`, parsed: the same click command run in this process (a
        read takes ~15 ms here against ~0.4 s for a new Python; polls call it many times).
        `borgcfg` runs the real program, for what a user sees of it."""
        from cfg.cli import main

        argv = ["--master", master or self.master_addrs]
        if self.tls:
            argv += ["--tls-dir", self.cert("admin", "admin")]
        else:
            argv += ["--user", "tester"]
        argv += [*args, "-o", "json"]
        out, err = io.StringIO(), io.StringIO()
        with _IN_PROCESS, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main.main(argv, prog_name="borgcfg", standalone_mode=True)
                code: Any = 0
            except SystemExit as e:
                code = e.code
        if code not in (0, None):
            raise AssertionError(f"borgcfg {' '.join(args)} -> {code}: {err.getvalue()}")
        return json.loads(out.getvalue())

    def cell_json(self) -> list[dict[str, Any]]:
        return list(self.borgcfg_json("cell"))

    def cell_json_via(self, master: str) -> list[dict[str, Any]]:
        return list(self.borgcfg_json("cell", master=master))

    def job(self, name: str) -> dict[str, Any]:
        return dict(self.borgcfg_json("status", name))

    def leader(self) -> Proc:
        def find() -> Proc | None:
            for m in self.masters:
                if m.alive():
                    code, body = self.http_get(m.info["http"], "/metrics")
                    if code == 200 and "borg_raft_is_leader 1.0" in body:
                        return m
            return None

        return wait_for(find, 20, what="a leader")

    def task_cgroup(self, borglet: Proc, job: str, index: int) -> str | None:
        """The memory-controller cgroup dir of a running task on `borglet`, if any."""
        parent = f"borgcell/{borglet.info['name']}"
        driver = detect("/sys/fs/cgroup", parent)
        if driver is None:
            return None
        for name in driver.list():
            if name.startswith(f"{job}.{index}."):
                if driver.version == 2:
                    return os.path.join("/sys/fs/cgroup", parent, name)
                return os.path.join("/sys/fs/cgroup/memory", parent, name)
        return None

    def task_cgroups(self) -> list[str]:
        out = []
        for b in self.borglets:
            driver = detect("/sys/fs/cgroup", f"borgcell/{b.info['name']}")
            if driver is not None:
                out += driver.list()
        return out

    def dump_logs(self) -> str:
        parts = []
        for p in self.masters + self.borglets + self.hollows:
            parts.append(f"===== {p.name} =====\n{p.log()[-6000:]}")
        return "\n".join(parts)

    # ----- teardown -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything and remove every task cgroup and process the cell made."""
        stop_all(self.borglets + self.hollows, timeout=10)
        stop_all(self.masters, timeout=10)
        for b in self.borglets:
            parent = f"borgcell/{b.info['name']}"
            driver = detect("/sys/fs/cgroup", parent)
            if driver is None:
                continue
            for name in driver.list():
                with contextlib.suppress(Exception):
                    driver.kill(name, signal.SIGKILL)
                wait_for(lambda n=name, d=driver: not d.pids(n), 10, what=f"cgroup {name} empty")
                driver.remove(name)
            with contextlib.suppress(Exception):
                driver.remove_parent()
        remove_empty_top_cgroups()
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def running_cell(masters: int = 1, borglets: int = 1, **cell_kw: Any) -> Iterator[Cell]:
    """A started cell for a module fixture, printing every log if it cannot start and always
    closed: `with running_cell(3, 1, tls=True) as c: yield c`."""
    c = Cell(**cell_kw)
    try:
        c.start(masters=masters, borglets=borglets)
    except Exception:
        print(c.dump_logs())
        c.close()
        raise
    try:
        yield c
    finally:
        c.close()


def processes_with_env(key: str, value: str) -> list[psutil.Process]:
    """Live processes whose environment has key=value (finds a job's tasks)."""
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(key) == value and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def remove_empty_top_cgroups() -> None:
    """rmdir the shared `borgcell/` parents once no Borglet uses them (fails harmlessly if
    another Borglet on this host still has cgroups there)."""
    for top in ["/sys/fs/cgroup/borgcell"] + [
        os.path.join("/sys/fs/cgroup", c, "borgcell") for c in os.listdir("/sys/fs/cgroup")
    ]:
        with contextlib.suppress(OSError):
            os.rmdir(top)


def task_index_copies(job: str) -> dict[str, int]:
    """How many live processes each task index of `job` has (tasks and their children share
    the environment, so only processes whose parent is not one of them are counted)."""
    procs: dict[int, tuple[int, str]] = {}
    for p in psutil.process_iter(["pid", "ppid"]):
        try:
            env = p.environ()
            if env.get("BORG_JOB") == job and p.status() != psutil.STATUS_ZOMBIE:
                procs[p.pid] = (p.info["ppid"], env.get("BORG_TASK_INDEX", "?"))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    out: dict[str, int] = {}
    for ppid, index in procs.values():
        if ppid not in procs:
            out[index] = out.get(index, 0) + 1
    return out


def add_master_with_args(
    cell: Cell,
    index: int,
    raft: str,
    peers: list[str],
    extra: list[str] | None = None,
    machine_timeout: float = 30.0,
    start: bool = True,
    grpc_addr: str = "",
    http_addr: str = "",
) -> Proc:
    """Like `Cell.add_master`, but with an explicit peer list and extra `borgmaster run`
    arguments (a Raft secret, a replica joining an existing cell with every member as peer).
    With `start=False` the process is only prepared (the test starts it and checks its exit).
    `grpc_addr`/`http_addr` reuse addresses (a new cell where an old one served)."""
    grpc_addr = grpc_addr or f"127.0.0.1:{free_port()}"
    http_addr = http_addr or f"127.0.0.1:{free_port()}"
    data = os.path.join(cell.base, f"m{index}")
    argv = [
        sys.executable,
        "-m",
        "borgmaster.cli",
        "run",
        "--id",
        f"m{index}",
        "--raft",
        raft,
        "--grpc",
        grpc_addr,
        "--http",
        http_addr,
        "--data-dir",
        data,
        "--machine-timeout",
        str(machine_timeout),
    ]
    for r in peers:
        argv += ["--peer", r]
    extra = list(extra or [])
    if peers and "--raft-secret-file" not in extra:
        extra += ["--raft-secret-file", cell.raft_secret_file()]
    if cell.tls and "--tls-dir" not in extra:
        extra += ["--tls-dir", cell.cert("master", f"m{index}")]
    if cell.audit and "--audit-log" not in extra:
        extra += ["--audit-log", cell.audit_log(index)]
    argv += extra
    p = Proc(f"m{index}", argv, os.path.join(cell.base, f"m{index}.log"))
    p.info = {"raft": raft, "grpc": grpc_addr, "http": http_addr, "data": data}
    if start:
        p.start()
    cell.masters.append(p)
    return p
