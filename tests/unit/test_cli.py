"""borgcfg through click's runner against an in-process fake Borgmaster (a real gRPC server on
a loopback port, state in a few dicts): every command's output, JSON keys per SPEC.md, exit
codes, one-line errors, retries with the same request id, and the unreachable-cell message.

The fake implements the proto, not the master's semantics: just enough state for the CLI to
have something true to print. tests/integration/test_cli_e2e.py runs the same commands
against a real cell.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result

from borgmaster.readiness import task_ready
from cfg.cli import main
from cfg.client import CellError, Client, Unreachable
from cfg.errors import ConfigError
from cfg.schema import spec_to_config, validate_job
from cfg.structs import dict_from, struct_from
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import free_port

NOW_MS = 1_700_000_000_000


def mark_ready(job: pb.Job) -> None:
    """Judge readiness as a real master does (its rule, this process's clock)."""
    spec = dict_from(job.spec) if job.HasField("spec") else {}
    check = spec.get("health") is not None
    backoff = int((spec.get("restart") or {}).get("backoff_ms", 1000))
    now = int(time.time() * 1000)
    job.ready = 0
    for t in job.tasks:
        t.ready = t.version == job.version and task_ready(t, check, backoff, now)
        job.ready += int(t.ready)


class FakeMaster(borg_pb2_grpc.BorgmasterServicer):
    """State in dicts; `fail_next` injects status codes for the next calls of a method."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, pb.Job] = {}
        self.machines: dict[str, pb.Machine] = {
            "m1": pb.Machine(
                name="m1",
                state="up",
                capacity=pb.Resources(cpu=4, ram=20186000000, gpu=1),
                used=pb.Resources(cpu=0.5, ram=64 << 20),
                attrs={"rack": "r1"},
                tasks=2,
                address="127.0.0.1:1",
            )
        }
        self.quotas: dict[tuple[str, str], pb.Quota] = {}
        self.events: list[pb.Event] = []
        self.request_ids: dict[str, list[str]] = {}
        self.fail_next: dict[str, list[tuple[grpc.StatusCode, str]]] = {}
        self.quota_error = ""
        self.watch_requests: list[pb.WatchEventsRequest] = []
        self.membership_calls = 0
        self.break_stream_after = 0  # >0: drop a WatchEvents stream after this many events
        # GetJob calls until a submitted job's tasks run (simulates scheduling)
        self.run_after_gets = 1
        self._gets: dict[str, int] = {}

    # -- helpers

    def _inject(self, method: str, ctx: grpc.ServicerContext) -> None:
        q = self.fail_next.get(method)
        if q:
            code, msg = q.pop(0)
            ctx.abort(code, msg)

    def _record(self, method: str, opts: pb.WriteOptions) -> None:
        self.request_ids.setdefault(method, []).append(opts.request_id)

    def _event(self, typ: str, job: str = "", index: int = -1, msg: str = "") -> None:
        self.events.append(
            pb.Event(
                index=len(self.events) + 1,
                ts_ms=NOW_MS,
                type=typ,
                job=job,
                task_index=index,
                message=msg,
            )
        )

    # -- jobs

    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> Any:
        self._record("SubmitJob", request.options)
        self._inject("SubmitJob", context)
        try:
            spec = validate_job(dict_from(request.spec), default_user=request.user)
        except ConfigError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if self.quota_error:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.quota_error)
        cfg = spec_to_config(spec)
        with self.lock:
            old = self.jobs.get(spec.name)
            if old is not None and old.state != "killed" and dict_from(old.spec) == cfg:
                return pb.SubmitJobResponse(name=spec.name, version=old.version, result="unchanged")
            version = old.version + 1 if old is not None else 1
            result = "updated" if old is not None and old.state != "killed" else "created"
            job = pb.Job(
                name=spec.name,
                user=spec.user,
                priority=spec.priority,
                kind=spec.kind,
                replicas=spec.replicas,
                state="pending",
                version=version,
                created_ms=NOW_MS,
                previous_version=old.version if old is not None else 0,
            )
            job.spec.CopyFrom(struct_from(cfg))
            for i in range(spec.replicas):
                job.tasks.append(pb.Task(index=i, state="pending", version=version, exit_code=-1))
            self.jobs[spec.name] = job
            self._gets[spec.name] = 0
            self._event("submitted", spec.name, msg=f"version {version}")
        return pb.SubmitJobResponse(name=spec.name, version=version, result=result)

    def KillJob(self, request: pb.KillJobRequest, context: grpc.ServicerContext) -> Any:
        self._record("KillJob", request.options)
        self._inject("KillJob", context)
        with self.lock:
            job = self.jobs.get(request.name)
            if job is None or job.state == "killed":
                context.abort(grpc.StatusCode.NOT_FOUND, f"job '{request.name}' does not exist")
            live = sum(1 for t in job.tasks if t.state not in ("killed", "succeeded"))
            job.state = "killed"
            job.running = 0
            for t in job.tasks:
                t.state = "killed"
            self._event("killed", request.name)
        return pb.KillJobResponse(name=request.name, tasks_to_stop=live)

    def Rollback(self, request: pb.RollbackRequest, context: grpc.ServicerContext) -> Any:
        self._record("Rollback", request.options)
        with self.lock:
            job = self.jobs.get(request.name)
            if job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"job '{request.name}' does not exist")
            if not job.previous_version:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"job '{request.name}' has no previous version to roll back to",
                )
            job.version += 1
        return pb.SubmitJobResponse(name=request.name, version=job.version, result="rolled back")

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> Any:
        self._inject("GetJob", context)
        with self.lock:
            job = self.jobs.get(request.name)
            if job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"job '{request.name}' does not exist")
            self._gets[job.name] = self._gets.get(job.name, 0) + 1
            if job.state == "pending" and self._gets[job.name] > self.run_after_gets:
                for t in job.tasks:
                    t.state, t.machine, t.updated_ms = "running", "m1", NOW_MS
                job.state = "running"
                job.running = job.replicas
            out = pb.Job()
            out.CopyFrom(job)
            mark_ready(out)
            return out

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> Any:
        self._inject("ListJobs", context)
        with self.lock:
            return pb.ListJobsResponse(jobs=list(self.jobs.values()))

    def ExplainTask(self, request: pb.ExplainTaskRequest, context: grpc.ServicerContext) -> Any:
        if request.job not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job '{request.job}' does not exist")
        return pb.ExplainTaskResponse(
            state="pending",
            reason="no-feasible-machine: ram",
            rejected={"ram": 9812, "constraint rack!=r1": 120},
            feasible=0,
            machines=9932,
        )

    # -- machines

    def ListMachines(self, request: pb.ListMachinesRequest, context: grpc.ServicerContext) -> Any:
        self._inject("ListMachines", context)
        return pb.ListMachinesResponse(machines=list(self.machines.values()))

    def DrainMachine(self, request: pb.DrainMachineRequest, context: grpc.ServicerContext) -> Any:
        self._record("DrainMachine", request.options)
        m = self.machines.get(request.name)
        if m is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"machine '{request.name}' does not exist")
        m.state = "up" if request.undrain else "draining"
        moved = 0 if request.undrain else m.tasks
        return pb.DrainMachineResponse(name=m.name, state=m.state, tasks_to_move=moved)

    # -- events, quota, cell

    def WatchEvents(
        self, request: pb.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Event]:
        self.watch_requests.append(request)
        self._inject("WatchEvents", context)
        evs = [e for e in self.events if e.index >= request.from_index]
        if request.job:
            evs = [e for e in evs if e.job == request.job]
        if request.tail:
            evs = evs[-request.tail :]
        for i, e in enumerate(evs):
            if self.break_stream_after and i == self.break_stream_after:
                self.break_stream_after = 0
                context.abort(grpc.StatusCode.UNAVAILABLE, "replica stopping")
            yield e

    def SetQuota(self, request: pb.SetQuotaRequest, context: grpc.ServicerContext) -> Any:
        self._record("SetQuota", request.options)
        q = pb.Quota()
        q.CopyFrom(request.quota)
        self.quotas[(q.user, q.band)] = q
        return pb.SetQuotaResponse(quota=q)

    def ListQuotas(self, request: pb.ListQuotasRequest, context: grpc.ServicerContext) -> Any:
        qs = [
            q for (u, _), q in sorted(self.quotas.items()) if not request.user or u == request.user
        ]
        return pb.ListQuotasResponse(quotas=qs)

    def _replicas(self) -> list[pb.ReplicaInfo]:
        return [
            pb.ReplicaInfo(
                id="m0",
                raft="127.0.0.1:7100",
                grpc=self.addr,
                role="leader",
                term=3,
                commit_index=42,
                leader="127.0.0.1:7100",
                applied_index=42,
            )
        ]

    addr = ""

    def CellStatus(self, request: pb.CellStatusRequest, context: grpc.ServicerContext) -> Any:
        self._inject("CellStatus", context)
        return pb.CellStatusResponse(replicas=self._replicas())

    def ChangeMembership(
        self, request: pb.ChangeMembershipRequest, context: grpc.ServicerContext
    ) -> Any:
        self.membership_calls += 1
        self._inject("ChangeMembership", context)
        reps = self._replicas()
        if not request.remove:
            reps.append(pb.ReplicaInfo(raft=request.raft, role="follower"))
        return pb.ChangeMembershipResponse(replicas=reps)


def serve(fm: FakeMaster) -> Iterator[tuple[FakeMaster, str]]:
    """Serve `fm` on a free loopback port for as long as the generator is open."""
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    borg_pb2_grpc.add_BorgmasterServicer_to_server(fm, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    fm.addr = f"127.0.0.1:{port}"
    yield fm, fm.addr
    srv.stop(None)


@pytest.fixture
def fake() -> Iterator[tuple[FakeMaster, str]]:
    """A fresh fake master per test (starting a gRPC server takes a few milliseconds)."""
    yield from serve(FakeMaster())


def run(addr: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["--master", addr, "--user", "alice", *args], env=env)


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


HELLO = "name: hello\nreplicas: 2\ncommand: 'sleep 100'\n"


def one_line_error(r: Result) -> str:
    """The single stderr line of a failed command (and proof there is no traceback)."""
    assert r.stdout == "" or r.exit_code == 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# -- validate -------------------------------------------------------------------------------


def test_validate_needs_no_master(tmp_path: Path) -> None:
    f = write(tmp_path, "h.yaml", HELLO)
    r = run(f"127.0.0.1:{free_port()}", "validate", f)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"{f}: job hello: ok (service, 2 replicas, priority 100)\n"


def test_validate_json_prints_the_normalised_job(tmp_path: Path) -> None:
    f = write(tmp_path, "h.yaml", HELLO)
    r = run("x:1", "validate", f, "-o", "json")
    assert r.exit_code == 0, r.stderr
    [job] = json.loads(r.stdout)
    assert job["name"] == "hello" and job["user"] == "alice"
    assert job["command"] == ["/bin/sh", "-c", "sleep 100"]


def test_validate_error_is_file_line_message_exit_1(tmp_path: Path) -> None:
    f = write(tmp_path, "web.yaml", "name: web\ncommand: x\nrequirements:\n  ram: -5Mi\n")
    r = run("x:1", "validate", f)
    assert r.exit_code == 1
    assert one_line_error(r) == f"borgcfg: {f}:4: requirements.ram: '-5Mi' is not a size"


def test_validate_band_mismatch(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "j.jsonnet",
        "local borg = import 'borg.libsonnet';\nborg.service { name: 'a', command: 'x', "
        "priority: 50 }",
    )
    r = run("x:1", "validate", f)
    assert r.exit_code == 1
    assert one_line_error(r) == (
        f"borgcfg: {f}: priority: 50 is outside band 'production' (200-299); "
        "set a priority in 200-299 or change band"
    )


def test_bad_ext_str_is_usage_error(tmp_path: Path) -> None:
    f = write(tmp_path, "h.yaml", HELLO)
    r = run("x:1", "validate", f, "--ext-str", "novalue")
    assert r.exit_code == 2
    assert "'novalue' is not KEY=VALUE" in r.stderr


def test_unknown_command_and_missing_argument_are_usage_errors() -> None:
    assert run("x:1", "frobnicate").exit_code == 2
    assert run("x:1", "down").exit_code == 2
    assert run("x:1", "status", "-o", "yaml").exit_code == 2


# -- up / down / rollback -------------------------------------------------------------------


def test_up_creates_then_reports_unchanged(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    fm, addr = fake
    f = write(tmp_path, "h.yaml", HELLO)
    r = run(addr, "up", f)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "job hello: created (version 1)\n"
    assert fm.jobs["hello"].user == "alice"
    r = run(addr, "up", f)
    assert r.stdout == "job hello: unchanged (version 1)\n"


def test_up_wait_shows_summary_when_tasks_run(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    fm, addr = fake
    fm.run_after_gets = 2
    r = run(addr, "up", write(tmp_path, "h.yaml", HELLO), "--wait", "--timeout", "10")
    assert r.exit_code == 0, r.stderr
    assert "✓ hello: ready (2/2; 2 running)" in r.stderr
    assert re.search(r"done in \d+\.\ds", r.stderr)


def test_up_wait_timeout_exits_1_with_counts(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    fm, addr = fake
    fm.run_after_gets = 10**9
    r = run(addr, "up", write(tmp_path, "h.yaml", HELLO), "--wait", "--timeout", "0.3")
    assert r.exit_code == 1
    assert "… hello: timed out (0/2; 2 pending)" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("borgcfg: timed out after 0.3s waiting for hello")


def test_quota_rejection_is_one_line_exit_1(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    fm, addr = fake
    fm.quota_error = "quota for alice/production exceeded by cpu 3.5"
    r = run(addr, "up", write(tmp_path, "h.yaml", HELLO))
    assert r.exit_code == 1
    assert one_line_error(r) == "borgcfg: rejected: quota for alice/production exceeded by cpu 3.5"


def test_write_retried_on_unavailable_with_same_request_id(
    fake: tuple[FakeMaster, str], tmp_path: Path
) -> None:
    fm, addr = fake
    fm.fail_next["SubmitJob"] = [
        (grpc.StatusCode.UNAVAILABLE, "write not committed: leader changed"),
        (grpc.StatusCode.UNAVAILABLE, "no leader"),
    ]
    r = run(addr, "up", write(tmp_path, "h.yaml", HELLO))
    assert r.exit_code == 0, r.stderr
    ids = fm.request_ids["SubmitJob"]
    assert len(ids) == 3 and len(set(ids)) == 1 and ids[0]


def test_down_and_down_unknown(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    _, addr = fake
    run(addr, "up", write(tmp_path, "h.yaml", HELLO))
    r = run(addr, "down", "hello", "--wait", "--timeout", "5")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "job hello: killed (2 tasks to stop)\n"
    assert "✓ hello: stopped" in r.stderr
    r = run(addr, "down", "nope")
    assert r.exit_code == 1
    assert one_line_error(r) == "borgcfg: job 'nope' does not exist"


def test_rollback(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    _, addr = fake
    f = write(tmp_path, "h.yaml", HELLO)
    run(addr, "up", f)
    r = run(addr, "rollback", "hello")
    assert r.exit_code == 1
    assert one_line_error(r) == (
        "borgcfg: rejected: job 'hello' has no previous version to roll back to"
    )
    run(addr, "up", write(tmp_path, "h.yaml", HELLO.replace("100", "200")))
    r = run(addr, "rollback", "hello")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "job hello: rolled back (version 3)\n"


# -- diff -----------------------------------------------------------------------------------


def test_diff_new_job_plans_starts(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    _, addr = fake
    r = run(addr, "diff", write(tmp_path, "h.yaml", HELLO))
    assert r.exit_code == 0, r.stderr
    assert "+ job hello: new, version 1" in r.stdout
    assert "plan: 2 tasks would start" in r.stdout


def test_diff_after_change_shows_fields_version_and_plan(
    fake: tuple[FakeMaster, str], tmp_path: Path
) -> None:
    _, addr = fake
    run(addr, "up", write(tmp_path, "h.yaml", HELLO))
    changed = "name: hello\nreplicas: 3\ncommand: 'sleep 200'\n"
    f = write(tmp_path, "h2.yaml", changed)
    r = run(addr, "diff", f)
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "~ job hello: version 1 -> 2"
    assert "-   replicas: 2" in lines and "+   replicas: 3" in lines
    assert '-   command: ["/bin/sh", "-c", "sleep 100"]' in lines
    assert '+   command: ["/bin/sh", "-c", "sleep 200"]' in lines
    assert lines[-1] == ("    plan: 1 task would start; 2 tasks would be replaced, 1 at a time")
    assert run(addr, "diff", f, "--exit-code").exit_code == 4
    r = run(addr, "diff", f, "-o", "json")
    [d] = json.loads(r.stdout)
    assert d["action"] == "update"
    assert d["version"] == {"old": 1, "new": 2}
    assert d["plan"] == {"start": 1, "stop": 0, "replace": 2}
    assert {"path": "replicas", "old": 2, "new": 3} in d["changes"]


def test_diff_scale_down_only_is_in_place(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    _, addr = fake
    run(addr, "up", write(tmp_path, "h.yaml", HELLO))
    r = run(addr, "diff", write(tmp_path, "h2.yaml", HELLO.replace("replicas: 2", "replicas: 1")))
    assert "~ job hello: version 1 (in place)" in r.stdout
    assert "plan: 1 task would stop" in r.stdout


def test_diff_unchanged_exit_code_0(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    _, addr = fake
    f = write(tmp_path, "h.yaml", HELLO)
    run(addr, "up", f)
    r = run(addr, "diff", f, "--exit-code")
    assert r.exit_code == 0
    assert r.stdout == "  job hello: unchanged (version 1)\n"


# -- status / machines / cell ---------------------------------------------------------------


def test_status_json_keys_per_spec(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    _, addr = fake
    run(addr, "up", write(tmp_path, "h.yaml", HELLO))
    [job] = json.loads(run(addr, "status", "-o", "json").stdout)
    assert set(job) >= {"name", "user", "priority", "state", "running", "replicas"}
    j = json.loads(run(addr, "status", "hello", "-o", "json").stdout)
    assert set(j) >= {"name", "user", "priority", "kind", "replicas", "state", "version", "tasks"}
    assert set(j["tasks"][0]) >= {
        "index",
        "state",
        "machine",
        "version",
        "restarts",
        "exit_code",
        "reason",
    }
    assert j["tasks"][0]["exit_code"] is None


def test_status_table_shows_health_and_human_usage(fake: tuple[FakeMaster, str]) -> None:
    fm, addr = fake
    job = pb.Job(name="web", user="alice", priority=200, kind="service", replicas=1)
    job.state, job.version, job.running = "running", 1, 1
    job.tasks.append(
        pb.Task(
            index=0,
            state="running",
            machine="m1",
            version=1,
            exit_code=-1,
            health="healthy",
            cpu_seconds=12.34,
            memory_bytes=20186000000,
            reason="",
        )
    )
    fm.jobs["web"] = job
    fm.run_after_gets = 10**9
    r = run(addr, "status", "web")
    assert r.exit_code == 0, r.stderr
    header, row = r.stdout.splitlines()[-2:]
    assert header.split() == [
        "INDEX",
        "STATE",
        "HEALTH",
        "MACHINE",
        "VERSION",
        "RESTARTS",
        "EXIT",
        "CPU",
        "MEM",
        "AGE",
        "REASON",
    ]
    assert row.split()[:9] == ["0", "running", "healthy", "m1", "1", "0", "-", "12.3s", "18.8Gi"]
    assert "\x1b[" not in r.stdout  # no colour codes when stdout is not a terminal


def test_status_unknown_job(fake: tuple[FakeMaster, str]) -> None:
    _, addr = fake
    r = run(addr, "status", "nope")
    assert r.exit_code == 1
    assert one_line_error(r) == "borgcfg: job 'nope' does not exist"


def test_machines_table_and_json(fake: tuple[FakeMaster, str]) -> None:
    fm, addr = fake
    fm.machines["m1"].attrs["a-very-long-attribute-name"] = "with-a-long-value-" * 5
    r = run(addr, "machines")
    assert r.exit_code == 0, r.stderr
    assert "64Mi/18.8Gi" in r.stdout
    # a wide row is neither truncated nor wrapped when stdout is not a terminal
    assert "with-a-long-value-" * 5 in r.stdout
    assert len(r.stdout.splitlines()) == 2
    [m] = json.loads(run(addr, "machines", "-o", "json").stdout)
    assert set(m) >= {"name", "state", "capacity", "used", "attrs", "tasks"}
    assert set(m["capacity"]) >= {"cpu", "ram", "gpu"} and set(m["used"]) >= {"cpu", "ram", "gpu"}
    assert m["capacity"]["ram"] == 20186000000


def test_cell_json_keys(fake: tuple[FakeMaster, str]) -> None:
    _, addr = fake
    [rep] = json.loads(run(addr, "cell", "-o", "json").stdout)
    assert set(rep) >= {"id", "raft", "grpc", "role", "term", "commit_index", "leader"}
    r = run(addr, "cell")
    assert r.stdout.splitlines()[0].split() == [
        "ID",
        "RAFT",
        "GRPC",
        "ROLE",
        "TERM",
        "COMMIT",
        "APPLIED",
        "LEADER",
    ]


def test_cell_add_and_remove(fake: tuple[FakeMaster, str]) -> None:
    _, addr = fake
    r = run(addr, "cell", "add", "127.0.0.1:7103")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == "added replica 127.0.0.1:7103"
    assert "127.0.0.1:7103" in r.stdout
    r = run(addr, "cell", "remove", "127.0.0.1:7103")
    assert r.stdout.splitlines()[0] == "removed replica 127.0.0.1:7103"
    assert run(addr, "cell", "add", "nonsense").exit_code == 2


# -- drain / why / events / quota / logs ----------------------------------------------------


def test_drain_and_undrain(fake: tuple[FakeMaster, str]) -> None:
    fm, addr = fake
    r = run(addr, "drain", "m1")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "machine m1: draining (2 tasks to move)\n"
    assert fm.machines["m1"].state == "draining"
    r = run(addr, "undrain", "m1")
    assert r.stdout == "machine m1: up (scheduling allowed again)\n"
    r = run(addr, "drain", "nope")
    assert r.exit_code == 1
    assert one_line_error(r) == "borgcfg: machine 'nope' does not exist"


def test_why_shows_rejections_by_filter(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    _, addr = fake
    run(addr, "up", write(tmp_path, "h.yaml", HELLO))
    r = run(addr, "why", "hello/0")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "hello/0: pending"
    assert lines[1] == "reason: no-feasible-machine: ram"
    assert lines[2] == "0 of 9932 machines feasible now"
    assert lines[4].split() == ["ram", "9812"]
    d = json.loads(run(addr, "why", "hello/0", "-o", "json").stdout)
    assert d["rejected"] == {"ram": 9812, "constraint rack!=r1": 120}
    assert run(addr, "why", "hello").exit_code == 2


def test_events_with_job_filter_and_json_lines(
    fake: tuple[FakeMaster, str], tmp_path: Path
) -> None:
    _, addr = fake
    run(addr, "up", write(tmp_path, "h.yaml", HELLO))
    run(addr, "up", write(tmp_path, "o.yaml", HELLO.replace("hello", "other")))
    r = run(addr, "events", "--job", "hello")
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1
    assert re.search(r"submitted +hello version 1", r.stdout)
    lines = run(addr, "events", "-o", "json").stdout.splitlines()
    assert [json.loads(x)["job"] for x in lines] == ["hello", "other"]
    assert set(json.loads(lines[0])) >= {"index", "ts_ms", "type", "job", "machine", "message"}


def test_events_follow_retries_a_stream_that_cannot_open(
    fake: tuple[FakeMaster, str], tmp_path: Path
) -> None:
    fm, addr = fake
    run(addr, "up", write(tmp_path, "h.yaml", HELLO))
    fm.fail_next["WatchEvents"] = [(grpc.StatusCode.UNAVAILABLE, "no leader")]
    r = run(addr, "events", "-f")  # the fake ends a followed stream once it is drained
    assert r.exit_code == 0, r.stderr
    assert "submitted" in r.stdout


def test_events_follow_resumes_a_broken_stream_without_repeats(
    fake: tuple[FakeMaster, str], tmp_path: Path
) -> None:
    fm, addr = fake
    for name in ("a", "b", "c"):
        run(addr, "up", write(tmp_path, f"{name}.yaml", HELLO.replace("hello", name)))
    fm.break_stream_after = 1
    r = run(addr, "events", "-f", "-o", "json")
    assert r.exit_code == 0, r.stderr
    assert [json.loads(x)["job"] for x in r.stdout.splitlines()] == ["a", "b", "c"]
    assert [w.from_index for w in fm.watch_requests[-2:]] == [0, 2]


def test_quota_set_and_list(fake: tuple[FakeMaster, str]) -> None:
    fm, addr = fake
    r = run(addr, "quota", "set", "alice", "production", "cpu=8", "ram=16Gi", "gpu=1")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "quota alice/production: cpu 8, ram 16Gi, disk unlimited, gpu 1\n"
    q = fm.quotas[("alice", "production")]
    assert (q.limit.cpu, q.limit.ram, q.limit.gpu) == (8, 16 << 30, 1)
    [j] = json.loads(run(addr, "quota", "list", "-o", "json").stdout)
    assert j["user"] == "alice" and j["limit"]["ram"] == 16 << 30
    r = run(addr, "quota", "list")
    assert r.stdout.splitlines()[1].split()[:3] == ["alice", "production", "0/8"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cpu=lots"], "cpu: 'lots' is not a number of cores"),
        (["ram=5"], None),
        (["ram=-1Gi"], "ram: '-1Gi' is not a size"),
        (["mem=1Gi"], "'mem=1Gi' is not cpu=CORES, ram=SIZE, disk=SIZE or gpu=N"),
        (["gpu=1.5"], "gpu: '1.5' is not a count"),
        (["cpu=1", "cpu=2"], "'cpu' given twice"),
    ],
)
def test_quota_set_bad_limits_are_usage_errors(
    fake: tuple[FakeMaster, str], args: list[str], message: str | None
) -> None:
    _, addr = fake
    r = run(addr, "quota", "set", "alice", "batch", *args)
    if message is None:
        assert r.exit_code == 0, r.stderr
        return
    assert r.exit_code == 2
    assert message in r.stderr


def test_quota_free_band_is_not_settable(fake: tuple[FakeMaster, str]) -> None:
    _, addr = fake
    assert run(addr, "quota", "set", "alice", "free", "cpu=1").exit_code == 2


def test_logs_needs_job_slash_index(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    _, addr = fake
    assert run(addr, "logs", "hello").exit_code == 2
    run(addr, "up", write(tmp_path, "h.yaml", HELLO))
    r = run(addr, "logs", "hello/7")
    assert r.exit_code == 1
    assert one_line_error(r) == "borgcfg: job 'hello' has no task 7 (it has 2)"


# -- unreachable, unimplemented, env, completion --------------------------------------------


def test_unreachable_cell_names_every_address_exit_3() -> None:
    a, b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    r = run(f"{a},{b}", "status")
    assert r.exit_code == 3
    assert one_line_error(r) == (
        f"borgcfg: cell unreachable; tried {a} (connection refused), {b} (connection refused)"
    )


def test_borg_master_env_is_the_default() -> None:
    a = f"127.0.0.1:{free_port()}"
    r = CliRunner().invoke(main, ["status"], env={"BORG_MASTER": a})
    assert r.exit_code == 3
    assert a in r.stderr


def test_one_bad_replica_is_skipped(fake: tuple[FakeMaster, str]) -> None:
    _, addr = fake
    dead = f"127.0.0.1:{free_port()}"
    r = run(f"{dead},{addr}", "status", "-o", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_unimplemented_rpc_is_one_line(fake: tuple[FakeMaster, str]) -> None:
    fm, addr = fake
    fm.fail_next["CellStatus"] = [(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")]
    r = run(addr, "cell")
    assert r.exit_code == 1
    assert one_line_error(r) == (
        "borgcfg: the cell does not support this command yet (Method not implemented!)"
    )


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script(shell: str) -> None:
    r = CliRunner().invoke(main, ["completion", shell])
    assert r.exit_code == 0, r.stderr
    assert "_BORGCFG_COMPLETE" in r.stdout
    assert "_borgcfg_completion" in r.stdout
    assert ("complete -o nosort -F" if shell == "bash" else "compdef") in r.stdout


def test_completion_completes_commands() -> None:
    r = CliRunner().invoke(
        main,
        [],
        env={"_BORGCFG_COMPLETE": "bash_complete", "COMP_WORDS": "borgcfg st", "COMP_CWORD": "1"},
        prog_name="borgcfg",
    )
    assert "plain,status" in r.stdout


# -- the client on its own ------------------------------------------------------------------


def test_client_discover_learns_replicas_and_prefers_the_leader(
    fake: tuple[FakeMaster, str],
) -> None:
    _, addr = fake
    dead = f"127.0.0.1:{free_port()}"
    c = Client([dead])
    c.discover()  # nothing answers: best effort, no error
    c = Client([dead, addr])
    c.discover()
    assert c.masters == [dead, addr]
    assert c.masters[c._preferred] == addr
    c.close()


def test_client_gives_up_on_a_cell_without_leader_after_retry_s(
    fake: tuple[FakeMaster, str],
) -> None:
    fm, addr = fake
    fm.fail_next["ListJobs"] = [(grpc.StatusCode.UNAVAILABLE, "no leader")] * 100
    slept: list[float] = []
    c = Client([addr], retry_s=1.0, sleep=slept.append)
    with pytest.raises(Unreachable) as exc:
        c.list_jobs()
    assert str(exc.value) == f"cell unavailable; tried {addr} (no leader)"
    assert slept[:4] == [0.1, 0.2, 0.4, 0.8] or sum(slept) <= 1.0
    assert len(fm.fail_next["ListJobs"]) < 100  # it did retry


def test_client_does_not_retry_membership_change_that_reached_a_server(
    fake: tuple[FakeMaster, str],
) -> None:
    fm, addr = fake
    fm.fail_next["ChangeMembership"] = [
        (grpc.StatusCode.UNAVAILABLE, "timed out waiting for the write to commit")
    ]
    with pytest.raises(Unreachable) as exc:
        Client([addr]).change_membership("127.0.0.1:7103", remove=False)
    assert fm.membership_calls == 1
    assert "timed out waiting for the write to commit" in str(exc.value)


def test_cell_error_is_one_line() -> None:
    e = CellError(grpc.StatusCode.INVALID_ARGUMENT, "bad\n  thing ")
    assert e.message == "bad thing"
