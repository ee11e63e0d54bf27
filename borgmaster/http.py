"""HTTP side of a replica: /healthz, /readyz, /metrics, and the cell's web UI.

The UI is server-rendered HTML from this replica's local store (any replica serves it; a
follower's view lags the leader by at most its apply delay), plus one small script
(`ui/app.js`) that re-fetches each page's content every few seconds for a live view. No build
step and nothing loaded from outside the master, so it works in an air-gapped cell.

Pages: `/` (replicas, machines, jobs, recent events), `/jobs/NAME` (tasks, "why pending?",
events), `/jobs/NAME/logs/INDEX` (a task's output, read from its Borglet over gRPC). JSON:
`/api/cell` and `/api/jobs/NAME` carry the same data for scripts and the page header.

The view builders (`*_view`) are pure reads of the store made under its lock; the I/O they
need besides (other replicas' Raft status, Borglet usage, logs) lives in `UIBackend`.
"""

from __future__ import annotations

import html
import http.client
import json
import logging
import socket
import ssl
import string
import threading
import time
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from borgmaster.auth import may_see_secrets
from borgmaster.facade import now_ms
from borgmaster.model import RUNNING, band_of
from borgmaster.sessions import COOKIE, SESSION_TTL_S, check_token, make_token, session_key
from borgmaster.store import ACTIVE_STATES, Store, needs_placement
from cfg import periodic
from cfg.bns import task_name
from cfg.grpcauth import secure_channel
from cfg.https import HttpServer, peer_identity
from cfg.schema import JOB_NAME_RE
from cfg.tls import INSECURE, Identity, Role, machine_host
from cfg.units import human_size
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc

if TYPE_CHECKING:
    from borgmaster.facade import HttpHost

log = logging.getLogger("borgmaster.http")

UI_DIR = Path(__file__).parent / "ui"
STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
REFRESH_S = 2  # live refresh period of the pages
MAX_ROWS = 500  # rows per table before "... and N more" (pages stay fast on big cells)
MAX_USAGE_MACHINES = 64  # beyond this, "used" bars are left out rather than scrape every Borglet
LOG_TAIL_BYTES = 65536
HTML_TYPE = "text/html; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json"


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


# ----- views: pure reads of the store (call with store.lock held) ---------------------------


@dataclass
class ReplicaView:
    id: str
    raft: str
    grpc: str
    http: str
    role: str
    term: int = 0
    commit_index: int = 0
    applied_index: int = 0
    leader: str = ""  # Raft address of the leader this replica knows
    is_self: bool = False


@dataclass
class MachineRow:
    name: str
    state: str
    address: str
    http: str
    capacity: dict[str, float]
    allocated: dict[str, float]
    used: dict[str, float] = field(default_factory=dict)  # from the Borglet; empty: unknown
    attrs: dict[str, str] = field(default_factory=dict)
    taints: list[str] = field(default_factory=list)
    tasks: int = 0


@dataclass
class JobRow:
    name: str
    user: str
    priority: int
    band: str
    kind: str
    state: str
    running: int
    replicas: int
    pending: int
    version: int
    why_pending: list[str] = field(default_factory=list)


@dataclass
class TaskRow:
    index: int
    state: str
    machine: str
    version: int
    restarts: int
    exit_code: int | None
    reason: str
    incarnation: str
    updated_ms: int
    waiting: bool  # needs a machine (pending, or lost and to be replaced)
    name: str = ""  # its BNS name (INDEX.JOB.USER.CELL.borg.)
    ports: dict[str, int] = field(default_factory=dict)
    gpus: list[str] = field(default_factory=list)  # its machine's devices it holds


@dataclass
class EventRow:
    index: int
    ts_ms: int
    type: str
    job: str
    task_index: int
    machine: str
    message: str


@dataclass
class JobDetail:
    job: JobRow
    command: list[str]
    requirements: dict[str, Any]
    restart: dict[str, Any]
    tasks: list[TaskRow]
    events: list[EventRow]
    # "why pending?": each distinct reason with how many waiting tasks give it.
    why_pending: list[tuple[str, int]]
    # A periodic job: its schedule, next fire time (epoch ms, 0: none) and kept children.
    schedule: str = ""
    next_run_ms: int = 0
    children: list[str] = field(default_factory=list)


def _res(r: Any) -> dict[str, float]:
    return {k: float(getattr(r, k)) for k in ("cpu", "ram", "disk", "gpu")}


def job_row(store: Store, name: str) -> JobRow:
    j = store.jobs[name]
    tasks = store.job_tasks(name)
    waiting = [t for t in tasks if needs_placement(t, j)]
    return JobRow(
        name=name,
        user=j.spec.user,
        priority=j.spec.priority,
        band=band_of(j.spec.priority),
        kind=j.spec.kind,
        state=j.state,
        running=sum(1 for t in tasks if t.state == RUNNING),
        replicas=j.spec.replicas,
        pending=len(waiting),
        version=j.version,
        why_pending=sorted({t.reason for t in waiting if t.reason}),
    )


def job_rows(store: Store) -> list[JobRow]:
    return [job_row(store, name) for name in sorted(store.jobs)]


def machine_rows(store: Store) -> list[MachineRow]:
    out = []
    for name in sorted(store.machines):
        m = store.machines[name]
        n = sum(
            1
            for k in store.tasks_by_machine.get(name, ())
            if k in store.tasks and store.tasks[k].state in ACTIVE_STATES
        )
        out.append(
            MachineRow(
                name=name,
                state=m.state,
                address=m.address,
                http=m.http,
                capacity=_res(m.capacity),
                allocated=_res(store.used(name)),
                attrs=dict(sorted(m.attrs.items())),
                taints=[t.flag() for t in m.taints],
                tasks=n,
            )
        )
    return out


def event_rows(store: Store, job: str = "", limit: int = 50) -> list[EventRow]:
    """The newest `limit` events (of `job` when given), newest first."""
    out: list[EventRow] = []
    events: Iterable[Any] = getattr(store, "events", [])
    for e in reversed(list(events)):
        if job and getattr(e, "job", "") != job:
            continue
        out.append(
            EventRow(
                index=int(getattr(e, "index", 0)),
                ts_ms=int(getattr(e, "ts_ms", 0)),
                type=str(getattr(e, "type", "")),
                job=str(getattr(e, "job", "")),
                task_index=int(getattr(e, "task_index", -1)),
                machine=str(getattr(e, "machine", "")),
                message=str(getattr(e, "message", "")),
            )
        )
        if len(out) >= limit:
            break
    return out


def job_detail(store: Store, name: str, cell: str = "borgcell") -> JobDetail | None:
    j = store.jobs.get(name)
    if j is None:
        return None
    row = job_row(store, name)
    tasks = []
    why: dict[str, int] = {}
    for t in store.job_tasks(name):
        waiting = needs_placement(t, j)
        if waiting:
            reason = t.reason or "waiting for the next scheduler pass"
            why[reason] = why.get(reason, 0) + 1
        tasks.append(
            TaskRow(
                index=t.index,
                state=t.state,
                machine=t.machine,
                version=t.version,
                restarts=t.restarts,
                exit_code=t.exit_code,
                reason=t.reason,
                incarnation=t.incarnation,
                updated_ms=t.updated_ms,
                waiting=waiting,
                name=task_name(t.index, name, j.spec.user, cell),
                ports=dict(t.ports),
                gpus=list(t.gpus),
            )
        )
    spec = j.spec
    schedule, next_run = "", 0
    if spec.periodic is not None:
        schedule = f"{spec.periodic.schedule} ({spec.periodic.time_zone})"
        parsed = periodic.parsed(spec.periodic.schedule, spec.periodic.time_zone)
        if parsed is not None and not j.killed:
            now = int(time.time() * 1000)
            base = max(j.last_scheduled_ms, j.created_ms, now - 1)
            next_run = periodic.next_after(parsed, base, j.created_ms)
    return JobDetail(
        job=row,
        command=list(spec.command),
        requirements=asdict(spec.requirements),
        restart=asdict(spec.restart),
        tasks=tasks,
        events=event_rows(store, name),
        why_pending=sorted(why.items(), key=lambda kv: (-kv[1], kv[0])),
        schedule=schedule,
        next_run_ms=next_run,
        children=list(j.children),
    )


# ----- I/O the pages need besides the store -------------------------------------------------


class UIBackend:
    """Other replicas' Raft status, Borglet usage and task logs, with short caches so that
    many open browser tabs cost the cell little."""

    def __init__(self, master: HttpHost) -> None:
        self.m = master
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ui")
        self._lock = threading.Lock()
        self._replicas: tuple[float, list[ReplicaView]] | None = None
        self._ssl: ssl.SSLContext | None = None
        # machine -> (monotonic time, cpu seconds total, usage)
        self._usage: dict[str, tuple[float, float | None, dict[str, float]]] = {}

    def me(self) -> ReplicaView:
        i = self.m.replica_info()
        return ReplicaView(
            id=i.id,
            raft=i.raft,
            grpc=i.grpc,
            http=i.http,
            role=i.role,
            term=i.term,
            commit_index=i.commit_index,
            applied_index=i.applied_index,
            leader=i.leader,
            is_self=True,
        )

    def leader_id(self, leader_raft: str) -> str:
        with self.m.store.lock:
            for r in self.m.store.replicas.values():
                if r.raft == leader_raft:
                    return r.id
        return leader_raft

    def replicas(self) -> list[ReplicaView]:
        """Every replica of the cell, this one from its own Raft status, the others asked."""
        with self._lock:
            if self._replicas and time.monotonic() - self._replicas[0] < 1.0:
                return self._replicas[1]
        me = self.me()
        with self.m.store.lock:
            known = {r.raft: r for r in self.m.store.replicas.values()}
        rafts = sorted({self.m.cfg.raft, *self.m.cfg.peers, *known})

        def ask(raft: str) -> ReplicaView:
            if raft == me.raft:
                return me
            r = known.get(raft)
            if r is None or not r.grpc:
                return ReplicaView(id="?", raft=raft, grpc="", http="", role="unknown")
            try:
                with secure_channel(r.grpc, self.m.cfg.tls) as ch:
                    i = borg_pb2_grpc.BorgmasterStub(ch).ReplicaStatus(
                        pb.ReplicaStatusRequest(), timeout=0.7
                    )
                return ReplicaView(
                    id=i.id or r.id,
                    raft=i.raft or raft,
                    grpc=i.grpc or r.grpc,
                    http=i.http or r.http,
                    role=i.role,
                    term=i.term,
                    commit_index=i.commit_index,
                    applied_index=i.applied_index,
                    leader=i.leader,
                )
            except grpc.RpcError:
                return ReplicaView(id=r.id, raft=raft, grpc=r.grpc, http=r.http, role="unreachable")

        out = sorted(self.pool.map(ask, rafts), key=lambda v: (v.id, v.raft))
        with self._lock:
            self._replicas = (time.monotonic(), out)
        return out

    def fill_usage(self, machines: list[MachineRow]) -> None:
        """Set each up machine's `used` from its Borglet's /metrics (cached ~1.5 s)."""
        todo = [m for m in machines if m.http and m.state != "lost"]
        if len(todo) > MAX_USAGE_MACHINES:
            return
        now = time.monotonic()
        stale = []
        with self._lock:
            for m in todo:
                c = self._usage.get(m.name)
                if c is not None and now - c[0] < 1.5:
                    m.used = dict(c[2])
                else:
                    stale.append(m)
        for m, res in zip(stale, self.pool.map(self._scrape, stale), strict=True):
            if res is not None:
                m.used = res

    def _scrape(self, m: MachineRow) -> dict[str, float] | None:
        try:
            text = self._get_metrics(m)
        except (OSError, ValueError):
            return None
        now = time.monotonic()
        used: dict[str, float] = {}
        cpu_total: float | None = None
        mem = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "borg_machine_used" and "resource" in s.labels:
                    used[s.labels["resource"]] = float(s.value)
                elif s.name == "borg_task_memory_bytes":
                    mem += float(s.value)
                elif s.name == "borg_task_cpu_seconds_total":
                    cpu_total = (cpu_total or 0.0) + float(s.value)
        if "ram" not in used:
            used["ram"] = mem
        with self._lock:
            prev = self._usage.get(m.name)
            if "cpu" not in used and cpu_total is not None and prev is not None:
                dt = now - prev[0]
                if prev[1] is not None and dt > 0 and cpu_total >= prev[1]:
                    used["cpu"] = (cpu_total - prev[1]) / dt
            self._usage[m.name] = (now, cpu_total, used)
        return used

    def _get_metrics(self, m: MachineRow) -> str:
        """A Borglet's /metrics: over HTTPS with this replica's certificate when the cell has
        TLS (the Borglet must prove it is that machine)."""
        tls = self.m.cfg.tls
        if tls is None:
            with urllib.request.urlopen(f"http://{m.http}/metrics", timeout=0.7) as r:
                return str(r.read().decode())
        with self._lock:
            if self._ssl is None:
                self._ssl = tls.client_context()
            ctx = self._ssl
        host, port = _split(m.http)
        # Verify the Borglet's certificate names this machine (not merely some Borglet).
        sock = socket.create_connection((host, port), timeout=0.7)
        try:
            ssock = ctx.wrap_socket(sock, server_hostname=machine_host(m.name))
        except (ssl.SSLError, OSError):
            sock.close()
            raise
        conn = http.client.HTTPConnection(host, port, timeout=0.7)
        conn.sock = ssock
        try:
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            if r.status != 200:
                raise OSError(f"/metrics: HTTP {r.status}")
            return str(r.read().decode())
        finally:
            conn.close()

    def read_logs(
        self,
        address: str,
        machine: str,
        job: str,
        index: int,
        stderr: bool,
        incarnation: str = "",
    ) -> bytes:
        """The last LOG_TAIL_BYTES of a task's stdout/stderr, from its Borglet: of the
        incarnation the store knows (not an older copy's sandbox left on that machine)."""
        with secure_channel(address, self.m.cfg.tls, Role.BORGLET, machine=machine) as ch:
            stream = borg_pb2_grpc.BorgletStub(ch).ReadLogs(
                pb.ReadLogsRequest(
                    job=job,
                    index=index,
                    stderr=stderr,
                    follow=False,
                    tail_bytes=LOG_TAIL_BYTES,
                    incarnation=incarnation,
                ),
                timeout=3.0,
            )
            return b"".join(c.data for c in stream)[-LOG_TAIL_BYTES:]


# ----- rendering ---------------------------------------------------------------------------

e = html.escape


def _layout() -> string.Template:
    return string.Template((UI_DIR / "layout.html").read_text())


LAYOUT = _layout()


def page(title: str, crumbs: str, main: str, me: ReplicaView, leader_id: str) -> str:
    replica = f"replica {me.id} ({me.role}, term {me.term}) · leader {leader_id or 'none'}"
    return LAYOUT.substitute(
        title=e(title),
        crumbs=crumbs,
        main=main,
        replica=e(replica),
        replica_id=e(me.id),
        refresh=REFRESH_S,
    )


def _state(s: str) -> str:
    return f"<span class='state {e(s)}'>{e(s)}</span>"


def _ms(ts_ms: int) -> str:
    if not ts_ms:
        return ""
    return time.strftime("%H:%M:%S", time.localtime(ts_ms / 1000))


def _fmt(resource: str, v: float) -> str:
    """One amount for the page: sizes as `borgcfg` shows them (`human_size`), cpu in cores."""
    if resource in ("ram", "disk"):
        return human_size(v)
    if resource == "cpu":
        return f"{v:.2f} cores"
    return f"{v:.0f}"


def _bar(resource: str, m: MachineRow) -> str:
    cap = m.capacity.get(resource, 0.0)
    alloc = m.allocated.get(resource, 0.0)
    used = m.used.get(resource)

    def pct(v: float) -> float:
        return 0.0 if cap <= 0 else max(0.0, min(100.0, 100.0 * v / cap))

    inner = f"<span class='alloc' style='width:{pct(alloc):.1f}%'></span>"
    label = f"{_fmt(resource, alloc)} / {_fmt(resource, cap)} allocated"
    if used is not None:
        inner += f"<span class='used' style='width:{pct(used):.1f}%'></span>"
        label += f", {_fmt(resource, used)} used"
    return (
        f"<span class='bar' data-resource='{resource}' title='{e(label)}'>{inner}</span>"
        f"<span class='barlabel'>{e(label)}</span>"
    )


def _more(n: int) -> str:
    return f"<p class='muted'>… and {n - MAX_ROWS} more</p>" if n > MAX_ROWS else ""


def render_replicas(reps: list[ReplicaView], leader_raft: str) -> str:
    rows = []
    for r in reps:
        ui = f"<a href='//{e(r.http)}/'>{e(r.http)}</a>" if r.http else ""
        me = " <span class='muted'>(this replica)</span>" if r.is_self else ""
        lead = "★" if r.raft == leader_raft and leader_raft else ""
        rows.append(
            f"<tr data-replica='{e(r.id)}'><td>{e(r.id)}{me}</td><td>{_state(r.role)}</td>"
            f"<td class='num'>{r.term}</td><td class='num'>{r.commit_index}</td>"
            f"<td class='num'>{r.applied_index}</td><td>{e(r.raft)}</td><td>{e(r.grpc)}</td>"
            f"<td>{ui}</td><td>{lead}</td></tr>"
        )
    return (
        "<table id='replicas'><tr><th>replica</th><th>role</th><th class='num'>term</th>"
        "<th class='num'>commit</th><th class='num'>applied</th><th>raft</th><th>grpc</th>"
        f"<th>ui</th><th>leader</th></tr>{''.join(rows)}</table>"
    )


def render_machines(ms: list[MachineRow]) -> str:
    rows = []
    for m in ms[:MAX_ROWS]:
        attrs = " ".join(f"<code>{e(k)}={e(v)}</code>" for k, v in m.attrs.items())
        taints = " ".join(f"<code>{e(t)}</code>" for t in m.taints)
        if m.capacity.get("gpu", 0) > 0:
            gpu = f"gpu {m.allocated.get('gpu', 0):.0f}/{m.capacity['gpu']:.0f}"
            taints += f" <code class='gpus'>{e(gpu)}</code>"
        rows.append(
            f"<tr data-machine='{e(m.name)}'><td>{e(m.name)}</td><td>{_state(m.state)}</td>"
            f"<td>{_bar('cpu', m)}</td><td>{_bar('ram', m)}</td>"
            f"<td class='num'>{m.tasks}</td><td class='attrs'>{attrs} {taints}</td></tr>"
        )
    legend = (
        "<p class='legend muted'>bars:<i style='background:var(--alloc)'></i>allocated"
        "<i style='background:var(--used)'></i>used (reported by the Borglet)</p>"
    )
    return (
        f"{legend}<table id='machines'><tr><th>machine</th><th>state</th><th>cpu</th>"
        f"<th>ram</th><th class='num'>tasks</th><th>attributes / taints</th></tr>"
        f"{''.join(rows)}</table>{_more(len(ms))}"
    )


def render_jobs(js: list[JobRow]) -> str:
    rows = []
    for j in js[:MAX_ROWS]:
        why = "; ".join(j.why_pending)
        rows.append(
            f"<tr data-job='{e(j.name)}'><td><a href='/jobs/{quote(j.name)}'>{e(j.name)}</a></td>"
            f"<td>{_state(j.state)}</td><td class='num running'>{j.running}/{j.replicas}</td>"
            f"<td class='num'>{j.priority}</td><td>{e(j.band)}</td><td>{e(j.kind)}</td>"
            f"<td>{e(j.user)}</td><td class='num'>{j.version}</td>"
            f"<td class='why'>{e(why)}</td></tr>"
        )
    if not rows:
        return (
            "<p class='muted' id='jobs'>No jobs yet: submit one with <code>borgcfg up</code>.</p>"
        )
    return (
        "<table id='jobs'><tr><th>job</th><th>state</th><th class='num'>running</th>"
        "<th class='num'>priority</th><th>band</th><th>kind</th><th>user</th>"
        f"<th class='num'>version</th><th>why pending?</th></tr>{''.join(rows)}</table>"
        f"{_more(len(js))}"
    )


def render_events(evs: list[EventRow], with_job: bool = True) -> str:
    if not evs:
        return "<p class='muted'>No events recorded.</p>"
    rows = []
    for ev in evs:
        task = f"{ev.job}/{ev.task_index}" if ev.task_index >= 0 else ev.job
        where = f"<a href='/jobs/{quote(ev.job)}'>{e(task)}</a>" if with_job and ev.job else e(task)
        rows.append(
            f"<tr><td>{_ms(ev.ts_ms)}</td><td>{e(ev.type)}</td><td>{where}</td>"
            f"<td>{e(ev.machine)}</td><td>{e(ev.message)}</td></tr>"
        )
    return (
        "<table class='events'><tr><th>time</th><th>event</th><th>task</th><th>machine</th>"
        f"<th>detail</th></tr>{''.join(rows)}</table>"
    )


def render_overview(
    reps: list[ReplicaView],
    me: ReplicaView,
    machines: list[MachineRow],
    jobs: list[JobRow],
    events: list[EventRow],
) -> str:
    leader = next((r.id for r in reps if r.role == "leader"), "none")
    up = sum(1 for m in machines if m.state == "up")
    cap = {r: sum(m.capacity[r] for m in machines if m.state != "lost") for r in ("cpu", "ram")}
    alloc = {r: sum(m.allocated[r] for m in machines) for r in ("cpu", "ram")}
    running = sum(j.running for j in jobs)
    pending = sum(j.pending for j in jobs)
    cards = [
        (leader, f"leader of {len(reps)} replicas"),
        (f"{up}/{len(machines)}", "machines up"),
        (f"{sum(1 for j in jobs if j.state == 'running')}/{len(jobs)}", "jobs running"),
        (str(running), "tasks running"),
        (str(pending), "tasks pending"),
        (f"{alloc['cpu']:.1f}/{cap['cpu']:.1f}", "cpu cores allocated"),
        (f"{_fmt('ram', alloc['ram'])}/{_fmt('ram', cap['ram'])}", "ram allocated"),
    ]
    card_html = "".join(
        f"<div class='card'><b>{e(v)}</b><span>{e(k)}</span></div>" for v, k in cards
    )
    return (
        f"<h1>Cell</h1><section class='cards'>{card_html}</section>"
        f"<h2>Replicas</h2>{render_replicas(reps, me.leader)}"
        f"<h2>Machines</h2>{render_machines(machines)}"
        f"<h2>Jobs</h2>{render_jobs(jobs)}"
        f"<h2>Recent events</h2>{render_events(events[:20])}"
    )


def render_job(d: JobDetail) -> str:
    j = d.job
    req = d.requirements
    spec = (
        f"<dl class='spec'><dt>state</dt><dd>{_state(j.state)}</dd>"
        f"<dt>running</dt><dd id='running'>{j.running}/{j.replicas}</dd>"
        f"<dt>user</dt><dd>{e(j.user)}</dd>"
        f"<dt>priority</dt><dd>{j.priority} ({e(j.band)})</dd><dt>kind</dt><dd>{e(j.kind)}</dd>"
        f"<dt>version</dt><dd>{j.version}</dd>"
        f"<dt>command</dt><dd><code>{e(json.dumps(d.command))}</code></dd>"
        f"<dt>requirements</dt><dd>cpu {req.get('cpu')} · ram {_fmt('ram', req.get('ram', 0))}"
        f" · disk {_fmt('disk', req.get('disk', 0))} · gpu {req.get('gpu')}</dd>"
        f"<dt>restart</dt><dd>{e(str(d.restart.get('policy', '')))}, "
        f"max {d.restart.get('max_restarts')}</dd></dl>"
    )
    if d.schedule:
        kids = " · ".join(f"<a href='/jobs/{quote(c)}'>{e(c)}</a>" for c in d.children)
        spec = spec.replace(
            "</dl>",
            f"<dt>schedule</dt><dd>{e(d.schedule)}</dd>"
            f"<dt>next run</dt><dd id='next-run'>{_ms(d.next_run_ms) if d.next_run_ms else '-'}"
            f"</dd><dt>children</dt><dd id='children'>{kids or '-'}</dd></dl>",
        )
    if d.why_pending:
        items = "".join(
            f"<li><b>{n}</b> task{'s' if n > 1 else ''}: {e(r)}</li>" for r, n in d.why_pending
        )
        why = f"<div class='panel' id='why'><ul>{items}</ul></div>"
    else:
        why = "<div class='panel ok' id='why'>Every task has a machine.</div>"
    rows = []
    base = f"/jobs/{quote(j.name)}"
    for t in d.tasks[: MAX_ROWS * 2]:
        logs = ""
        if t.machine:
            logs = (
                f"<a href='{base}/logs/{t.index}'>stdout</a> · "
                f"<a href='{base}/logs/{t.index}?stderr=1'>stderr</a>"
            )
        ec = "" if t.exit_code is None else str(t.exit_code)
        reason = f"<span class='why'>{e(t.reason)}</span>" if t.waiting else e(t.reason)
        ports = " ".join(f"{e(k)}={v}" for k, v in sorted(t.ports.items()))
        gpus = f" <span class='gpus'>gpu {e(','.join(t.gpus))}</span>" if t.gpus else ""
        rows.append(
            f"<tr data-task='{t.index}'><td class='num'>{t.index}</td>"
            f"<td><code>{e(t.name)}</code></td><td>{_state(t.state)}</td>"
            f"<td>{e(t.machine)}{gpus}</td><td class='ports'>{ports}</td>"
            f"<td class='num'>{t.version}</td>"
            f"<td class='num'>{t.restarts}</td><td class='num'>{ec}</td><td>{reason}</td>"
            f"<td>{_ms(t.updated_ms)}</td><td>{logs}</td></tr>"
        )
    tasks = (
        "<table id='tasks'><tr><th class='num'>task</th><th>name (BNS)</th><th>state</th>"
        "<th>machine</th><th>ports</th><th class='num'>version</th>"
        "<th class='num'>restarts</th><th class='num'>exit</th>"
        f"<th>reason</th><th>updated</th><th>logs</th></tr>{''.join(rows)}</table>"
    )
    return (
        f"<h1>Job {e(j.name)}</h1>{spec}<h2>Why pending?</h2>{why}<h2>Tasks</h2>{tasks}"
        f"<h2>Recent events</h2>{render_events(d.events, with_job=False)}"
    )


def render_logs(job: str, index: int, stderr: bool, machine: str, text: str, err: str) -> str:
    stream = "stderr" if stderr else "stdout"
    other = "" if stderr else "?stderr=1"
    other_name = "stdout" if stderr else "stderr"
    base = f"/jobs/{quote(job)}/logs/{index}"
    body = (
        f"<p class='error'>{e(err)}</p>"
        if err
        else f"<pre class='log' id='log'>{e(text) or '(empty)'}</pre>"
    )
    return (
        f"<h1>{e(job)}/{index} {stream}</h1>"
        f"<p>on <b>{e(machine or 'no machine')}</b> · last {LOG_TAIL_BYTES // 1024} KiB · "
        f"<a href='{base}{other}'>{other_name}</a> · <a href='{base}{'?stderr=1' if stderr else ''}"
        f"{'&' if stderr else '?'}raw=1'>raw</a></p>{body}"
    )


# ----- the server --------------------------------------------------------------------------


@dataclass
class Response:
    code: int
    body: bytes
    ctype: str = TEXT_TYPE
    headers: tuple[tuple[str, str], ...] = ()


NEEDS_IDENTITY = (
    b"this cell's web UI needs a client certificate of the cell, or a login link: run "
    b"`borgcfg ui` and open the link it prints\n"
)


class UI:
    """Routes of the HTTP port; each returns a Response (no exceptions escape)."""

    def __init__(self, master: HttpHost) -> None:
        self.m = master
        self.io = UIBackend(master)
        secret = master.cfg.raft_secret
        self._session_key = session_key(secret) if master.cfg.tls and secret else None

    def identify(self, cert: Identity | None, cookie: str) -> Identity | None:
        """Who asks: INSECURE on a plaintext cell, else the client certificate, else a
        session cookie from a login link (sessions.py); None when neither is there."""
        if self.m.cfg.tls is None:
            return INSECURE
        if cert is not None:
            return cert
        jar = SimpleCookie()
        try:
            jar.load(cookie[:4096])
        except CookieError:
            return None
        morsel = jar.get(COOKIE)
        if morsel is None or self._session_key is None:
            return None
        return check_token(self._session_key, morsel.value, "session", now_ms())

    def login(self, token: str) -> Response:
        """Exchange a login link's token for a session cookie, then show the cell."""
        key = self._session_key
        who = check_token(key, token, "login", now_ms()) if key else None
        if key is None or who is None:
            return Response(403, b"this login link is not valid (expired?): run `borgcfg ui`\n")
        cookie = make_token(key, who, "session", now_ms(), SESSION_TTL_S)
        attrs = f"Path=/; Max-Age={SESSION_TTL_S}; Secure; HttpOnly; SameSite=Strict"
        return Response(
            303, b"", headers=(("Location", "/"), ("Set-Cookie", f"{COOKIE}={cookie}; {attrs}"))
        )

    def handle(self, raw_path: str, who: Identity | None = INSECURE) -> Response:
        u = urlsplit(raw_path)
        path = unquote(u.path)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        m = self.m
        if path == "/healthz":
            return Response(200, b"ok\n")
        if path == "/readyz":
            why = m.unready_reason()
            if not why:
                return Response(200, b"ready\n")
            return Response(503, f"not ready: {why}\n".encode())
        if path == "/login":
            return self.login(q.get("token", ""))
        if who is None:
            return Response(401, NEEDS_IDENTITY)
        if who.role is Role.BORGLET:
            return Response(403, f"{who.name} (borglet) may not read the web UI\n".encode())
        if path == "/metrics":
            return Response(200, generate_latest(m.metrics_registry()), CONTENT_TYPE_LATEST)
        if path == "/favicon.ico":
            return self.static("favicon.svg")
        if path.startswith("/ui/"):
            return self.static(path[len("/ui/") :])
        if path == "/api/cell":
            return self.api_cell(q.get("replica_only") == "1")
        if path.startswith("/api/jobs/"):
            return self.api_job(path[len("/api/jobs/") :])
        partial = q.get("partial") == "1"
        if path in ("/", "/index.html"):
            return self.overview(partial)
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "jobs":
            return self.job(parts[1], partial)
        if len(parts) == 4 and parts[0] == "jobs" and parts[2] == "logs" and parts[3].isdigit():
            stderr = q.get("stderr") == "1"
            return self.logs(parts[1], int(parts[3]), stderr, q.get("raw") == "1", partial, who)
        return Response(404, b"not found\n")

    def static(self, name: str) -> Response:
        p = UI_DIR / name
        ctype = STATIC_TYPES.get(p.suffix)
        if "/" in name or ctype is None or not p.is_file():
            return Response(404, b"not found\n")
        return Response(200, p.read_bytes(), ctype)

    def _page(self, title: str, crumbs: str, main: str, partial: bool) -> Response:
        if partial:
            return Response(200, main.encode(), HTML_TYPE)
        me = self.io.me()
        body = page(title, crumbs, main, me, self.io.leader_id(me.leader) if me.leader else "")
        return Response(200, body.encode(), HTML_TYPE)

    def overview(self, partial: bool) -> Response:
        store = self.m.store
        with store.lock:
            machines = machine_rows(store)
            jobs = job_rows(store)
            events = event_rows(store, limit=20)
        self.io.fill_usage(machines)
        reps = self.io.replicas()
        main = render_overview(reps, self.io.me(), machines, jobs, events)
        return self._page("cell", "", main, partial)

    def job(self, name: str, partial: bool) -> Response:
        with self.m.store.lock:
            d = job_detail(self.m.store, name, self.m.cfg.cell)
        if d is None:
            return Response(404, f"no job named {name!r}\n".encode())
        crumbs = f"/ <a href='/jobs/{quote(name)}'>{e(name)}</a>"
        return self._page(f"job {name}", crumbs, render_job(d), partial)

    def logs(
        self,
        name: str,
        index: int,
        stderr: bool,
        raw: bool,
        partial: bool,
        who: Identity = INSECURE,
    ) -> Response:
        store = self.m.store
        if not JOB_NAME_RE.fullmatch(name):  # never relayed to a Borglet
            return Response(404, f"no task {name[:80]}/{index}\n".encode())
        with store.lock:
            job = store.jobs.get(name)
            owner = job.spec.user if job is not None else ""
        if job is not None and not may_see_secrets(who, owner):
            return Response(
                403, f"{who.name} may not read the logs of job '{name}' (owner {owner})\n".encode()
            )
        with store.lock:
            t = store.tasks.get((name, index))
            machine = t.machine if t is not None else ""
            mach = store.machines.get(machine) if machine else None
            address = mach.address if mach is not None else ""
            incarnation = t.incarnation if t is not None else ""
        if t is None:
            return Response(404, f"no task {name}/{index}\n".encode())
        text, err = "", ""
        if not address:
            err = f"task {name}/{index} has no machine (state {t.state}): no logs to read"
        else:
            try:
                raw_text = self.io.read_logs(address, machine, name, index, stderr, incarnation)
                text = raw_text.decode(errors="replace")
            except grpc.RpcError as ex:
                err = f"cannot read logs from {machine}: {ex.details() or ex.code().name}"
        if raw:
            return Response(200 if not err else 502, (err or text).encode())
        crumbs = (
            f"/ <a href='/jobs/{quote(name)}'>{e(name)}</a> / {index} / "
            f"{'stderr' if stderr else 'stdout'}"
        )
        main = render_logs(name, index, stderr, machine, text, err)
        return self._page(f"{name}/{index} logs", crumbs, main, partial)

    def api_cell(self, replica_only: bool) -> Response:
        me = self.io.me()
        doc: dict[str, Any] = {
            "replica": asdict(me),
            "leader": me.leader,
            "leader_id": self.io.leader_id(me.leader) if me.leader else "",
        }
        if not replica_only:
            with self.m.store.lock:
                machines = machine_rows(self.m.store)
                jobs = job_rows(self.m.store)
            self.io.fill_usage(machines)
            doc["replicas"] = [asdict(r) for r in self.io.replicas()]
            doc["machines"] = [asdict(m) for m in machines]
            doc["jobs"] = [asdict(j) for j in jobs]
        return Response(200, json.dumps(doc).encode(), JSON_TYPE)

    def api_job(self, name: str) -> Response:
        with self.m.store.lock:
            d = job_detail(self.m.store, name, self.m.cfg.cell)
        if d is None:
            return Response(
                404, json.dumps({"error": f"no job named {name!r}"}).encode(), JSON_TYPE
            )
        return Response(200, json.dumps(asdict(d)).encode(), JSON_TYPE)


def start_http(master: HttpHost) -> HttpServer:
    ui = UI(master)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet access log
            return

        def do_GET(self) -> None:
            try:
                who = ui.identify(peer_identity(self), self.headers.get("Cookie", ""))
                r = ui.handle(self.path, who)
            except Exception as ex:  # one bad page must not take the port down
                log.exception("GET %s failed", self.path)
                r = Response(500, f"internal error: {type(ex).__name__}: {ex}\n".encode())
            self.send_response(r.code)
            self.send_header("Content-Type", r.ctype)
            # Task output is served as text/plain: a browser must never sniff it into HTML.
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Length", str(len(r.body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in r.headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(r.body)

    tls = master.cfg.tls
    server = HttpServer(
        _split(master.cfg.http), Handler, tls.server_context() if tls is not None else None
    )
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
