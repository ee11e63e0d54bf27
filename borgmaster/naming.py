"""BNS, Borg's naming: every task findable by name, answered from a replica's own store.

The zone of a cell is `CELL.borg.`; under it (SPEC part 2, "Naming (BNS)"):

    INDEX.JOB.USER.CELL.borg.          A/AAAA  the machine running that task
    JOB.USER.CELL.borg.                A/AAAA  every serving task's machine
    _PORT._tcp.JOB.USER.CELL.borg.     SRV     one per serving task with that named port,
                                               target INDEX.JOB.USER.CELL.borg.

A task serves when it is running and, if its job has a health check, healthy. A name that
exists but has nothing to serve right now (a job whose tasks are pending) answers NOERROR with
no records (so resolvers do not cache a negative for the whole name); a name that cannot
exist answers NXDOMAIN; a name outside the zone is REFUSED.

Pure: `Zone.answer` reads the store (under its lock) and returns records as plain tuples; the
wire format is `dns.py`'s. Every lookup is by key (a job, a task), never a scan of the cell,
so a query costs the same with 100 tasks or 100,000.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum

from borgmaster.model import RUNNING, Job, Machine, Task
from borgmaster.store import Store
from cfg.bns import task_name, zone

__all__ = ["Zone", "task_name"]

TTL = 5
"""Seconds resolvers may cache an answer: tasks move, so names must follow them quickly."""


class Rcode(Enum):
    NOERROR = 0
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


@dataclass(frozen=True)
class Record:
    """One resource record. `value` is an address (A/AAAA), a target name (CNAME), a
    (priority, weight, port, target) tuple (SRV), or (mname, rname, serial) (SOA)."""

    name: str
    rtype: str
    value: object
    ttl: int = TTL


@dataclass
class Answer:
    rcode: Rcode
    answers: list[Record] = field(default_factory=list)
    additional: list[Record] = field(default_factory=list)
    soa: Record | None = None  # in the authority section of negative answers
    authoritative: bool = True


@dataclass(frozen=True)
class Endpoint:
    """A serving task as `borgcfg endpoints` shows it."""

    index: int
    machine: str
    host: str
    ports: dict[str, int]
    healthy: bool


def machine_host(m: Machine | None) -> str:
    """The host part of a machine's Borglet address ('' when unknown or unusable)."""
    if m is None or not m.address:
        return ""
    host = m.address.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return ""
    return host


def serving(job: Job, t: Task) -> bool:
    """Running, and healthy when the task's version has a health check."""
    if t.state != RUNNING or not t.machine:
        return False
    spec = job.spec_for(t.version)
    return spec.health is None or t.health == "healthy"


def address_records(name: str, host: str) -> list[Record]:
    """A or AAAA for an IP literal, else a CNAME to the machine's host name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return [Record(name, "CNAME", host.rstrip(".") + ".")]
    return [Record(name, "A" if ip.version == 4 else "AAAA", str(ip))]


class Zone:
    """The `CELL.borg.` zone of one cell, answered from `store`."""

    def __init__(self, cell: str, store: Store) -> None:
        self.cell = cell.lower()
        self.origin = zone(cell)
        self.store = store

    def soa(self) -> Record:
        serial = self.store.applied_index % (1 << 32) or 1
        return Record(
            self.origin, "SOA", (f"ns.{self.origin}", f"hostmaster.{self.origin}", serial)
        )

    def relative(self, qname: str) -> list[str] | None:
        """The labels of `qname` below the origin (leftmost first), or None outside the zone."""
        name = qname.lower().rstrip(".") + "."
        if name == self.origin:
            return []
        if not name.endswith("." + self.origin):
            return None
        return name[: -len(self.origin) - 1].split(".")

    def answer(self, qname: str, qtype: str) -> Answer:
        labels = self.relative(qname)
        if labels is None:
            return Answer(Rcode.REFUSED, authoritative=False)
        name = qname.lower().rstrip(".") + "."
        with self.store.lock:
            exists, records, extra = self._lookup(labels, name)
        if not exists:
            return Answer(Rcode.NXDOMAIN, soa=self.soa())
        if qtype == "ANY":
            # RFC 8482: a minimal answer instead of everything the name has.
            return Answer(Rcode.NOERROR, [Record(name, "HINFO", ("RFC8482", ""))])
        cname = [r for r in records if r.rtype == "CNAME"]
        if cname and qtype != "CNAME":
            return Answer(Rcode.NOERROR, cname)
        matched = [r for r in records if r.rtype == qtype]
        if not matched:
            return Answer(Rcode.NOERROR, soa=self.soa())  # NODATA
        return Answer(Rcode.NOERROR, matched, extra if qtype == "SRV" else [])

    def _lookup(self, labels: list[str], name: str) -> tuple[bool, list[Record], list[Record]]:
        """(whether the name exists, its records, additional records for SRV targets)."""
        if not labels:
            return True, [self.soa()], []
        user = labels[-1]
        if len(labels) == 1:
            return any(self._owned(j, user) for j in self.store.jobs.values()), [], []
        job = self.store.jobs.get(labels[-2])
        if job is None or not self._owned(job, user):
            return False, [], []
        if len(labels) == 2:
            records = []
            seen: set[str] = set()
            for t in self.store.job_tasks(job.name):
                host = self._host(job, t)
                if host and host not in seen:
                    seen.add(host)
                    records += [r for r in address_records(name, host) if r.rtype != "CNAME"]
            return True, records, []
        if len(labels) == 3 and labels[0].isdigit() and len(labels[0]) < 7:
            task = self.store.tasks.get((job.name, int(labels[0])))
            # Surge tasks (past the replicas, while a rollout has them) serve and resolve too.
            if task is None or int(labels[0]) >= job.spec.replicas + job.surge:
                return False, [], []
            host = self._host(job, task)
            return True, address_records(name, host) if host else [], []
        if labels[-3] != "_tcp" or len(labels) > 4:
            return False, [], []
        ports = job.spec.requirements.ports
        if len(labels) == 3:
            return bool(ports), [], []
        port = labels[0][1:] if labels[0].startswith("_") else ""
        if port not in ports:
            return False, [], []
        records, extra = [], []
        base = f"{job.name}.{user}.{self.origin}"
        for t in self.store.job_tasks(job.name):
            host = self._host(job, t)
            if not host or port not in t.ports:
                continue
            target = f"{t.index}.{base}"
            records.append(Record(name, "SRV", (0, 0, int(t.ports[port]), target)))
            extra += address_records(target, host)
        return True, records, extra

    @staticmethod
    def _owned(job: Job, user: str) -> bool:
        return not job.killed and job.spec.user.lower() == user

    def _host(self, job: Job, t: Task) -> str:
        if not serving(job, t):
            return ""
        return machine_host(self.store.machines.get(t.machine))

    def endpoints(self, job_name: str) -> list[Endpoint]:
        """Every running task of the job with its machine, host, ports and health verdict."""
        out = []
        with self.store.lock:
            job = self.store.jobs.get(job_name)
            if job is None or job.killed:
                return []
            for t in self.store.job_tasks(job_name):
                if t.state != RUNNING or not t.machine:
                    continue
                out.append(
                    Endpoint(
                        index=t.index,
                        machine=t.machine,
                        host=machine_host(self.store.machines.get(t.machine)),
                        ports=dict(t.ports),
                        healthy=serving(job, t),
                    )
                )
        return out
