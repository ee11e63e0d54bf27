"""End to end on a real cell: 3 masters (Raft) + 1 Borglet, real cgroups, real processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import pytest

from borgmaster.convert import struct_from
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import Cell, processes_with_env, wait_for

pytestmark = [pytest.mark.e2e]


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def running(cell: Cell, job: str, n: int) -> bool:
    j = cell.job(job)
    return sum(1 for t in j["tasks"] if t["state"] == "running") == n


def cgroup_read(path: str, name: str) -> str:
    with open(os.path.join(path, name)) as f:
        return f.read().strip()


def test_cell_lists_three_replicas_with_one_leader(cell3: Cell) -> None:
    reps = cell3.cell_json()
    assert len(reps) == 3
    assert {r["id"] for r in reps} == {"m0", "m1", "m2"}
    leaders = [r for r in reps if r["role"] == "leader"]
    assert len(leaders) == 1
    assert all(r["leader"] == leaders[0]["raft"] for r in reps)
    assert set(reps[0]) >= {"id", "raft", "grpc", "role", "term", "commit_index", "leader"}


def test_two_replica_job_runs_in_cgroups_sized_to_request(cell3: Cell, tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "two.yaml",
        "name: two\nreplicas: 2\nrun_as: nobody\n"
        "command: 'while true; do echo tick; sleep 1; done'\n"
        "requirements: {cpu: 0.1, ram: 48Mi}\n",
    )
    r = cell3.borgcfg("up", cfg, "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    job = cell3.job("two")
    assert job["state"] == "running"
    assert [t["state"] for t in job["tasks"]] == ["running", "running"]
    assert set(job) >= {"name", "user", "priority", "kind", "replicas", "state", "version"}
    assert set(job["tasks"][0]) >= {"index", "state", "machine", "version", "restarts"}
    b = cell3.borglets[0]
    for i in range(2):
        cg = wait_for(lambda i=i: cell3.task_cgroup(b, "two", i), 10, what="task cgroup")
        pids = [int(p) for p in cgroup_read(cg, "cgroup.procs").split()]
        assert pids, "task cgroup has no process"
        limit = (
            cgroup_read(cg, "memory.max")
            if os.path.exists(os.path.join(cg, "memory.max"))
            else cgroup_read(cg, "memory.limit_in_bytes")
        )
        assert int(limit) == 48 * 2**20
        with open(f"/proc/{pids[0]}/status") as f:
            uid_line = next(line for line in f if line.startswith("Uid:"))
        assert int(uid_line.split()[1]) == 65534  # nobody
        with open(f"/proc/{pids[0]}/environ") as f:
            env = f.read().split("\0")
        assert f"BORG_TASK_INDEX={i}" in env and "BORG_JOB=two" in env
    # Logs come back through the Borglet's gRPC stream.
    wait_for(lambda: "tick" in cell3.borgcfg("logs", "two/0").stdout, 10, what="log output")

    # down --wait leaves no process and no cgroup behind.
    r = cell3.borgcfg("down", "two", "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    job = cell3.job("two")
    assert job["state"] == "killed"
    assert all(t["state"] == "killed" for t in job["tasks"])
    assert not processes_with_env("BORG_JOB", "two")
    assert not [c for c in cell3.task_cgroups() if c.startswith("two.")]


def test_memory_hog_is_oom_killed_and_reported(cell3: Cell, tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "hog.yaml",
        "name: memhog\nkind: batch\nrun_as: nobody\nrestart: {policy: never}\n"
        "command: ['python3', '-c', 'x = [bytearray(1 << 20) for _ in range(1000)]']\n"
        "requirements: {cpu: 0.5, ram: 40Mi}\n",
    )
    assert cell3.borgcfg("up", cfg).returncode == 0

    def failed() -> dict[str, object] | None:
        t = cell3.job("memhog")["tasks"][0]
        return t if t["state"] == "failed" else None

    t = wait_for(failed, 30, what="memhog failed")
    assert t["reason"] == "oom"
    assert t["exit_code"] == 137
    assert cell3.job("memhog")["state"] == "failed"
    wait_for(lambda: not [c for c in cell3.task_cgroups() if c.startswith("memhog.")], 10)


def test_cpu_hog_is_throttled_to_its_request(cell3: Cell, tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "cpu.yaml",
        "name: cpuhog\nrun_as: nobody\ncommand: 'while :; do :; done'\n"
        "requirements: {cpu: 0.2, ram: 16Mi}\n",
    )
    assert cell3.borgcfg("up", cfg, "--wait", "--timeout", "30").returncode == 0
    b = cell3.borglets[0]
    cg = wait_for(lambda: cell3.task_cgroup(b, "cpuhog", 0), 10, what="cgroup")

    def usage_s() -> float:
        if os.path.exists(os.path.join(cg, "cpu.stat")) and "cgroup/memory" not in cg:
            for line in cgroup_read(cg, "cpu.stat").splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) / 1e6
        acct = cg.replace("/sys/fs/cgroup/memory/", "/sys/fs/cgroup/cpuacct/")
        return int(cgroup_read(acct, "cpuacct.usage")) / 1e9

    u0, t0 = usage_s(), time.monotonic()
    # Measure over a fixed window: this is the quantity under test, not synchronisation.
    time.sleep(3.0)
    used = (usage_s() - u0) / (time.monotonic() - t0)
    assert 0.05 < used <= 0.25, f"cpu 0.2 task used {used:.3f} cores"
    assert cell3.borgcfg("down", "cpuhog", "--wait").returncode == 0


def test_job_that_fits_nowhere_stays_pending_with_reason(cell3: Cell, tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "big.yaml",
        "name: big\ncommand: 'sleep 100'\nrequirements: {cpu: 64, ram: 1Gi}\n",
    )
    assert cell3.borgcfg("up", cfg).returncode == 0

    def reason() -> str:
        t = cell3.job("big")["tasks"][0]
        return str(t["reason"]) if t["state"] == "pending" else ""

    why = wait_for(reason, 10, what="pending reason")
    assert why.startswith("no-feasible-machine")
    assert "cpu" in why
    assert cell3.borgcfg("down", "big").returncode == 0


def test_write_through_follower_is_read_back_everywhere(cell3: Cell, tmp_path: Path) -> None:
    leader = cell3.leader()
    follower = next(m for m in cell3.masters if m is not leader)
    cfg = write(tmp_path, "f.yaml", "name: viafollower\ncommand: 'sleep 1000'\n")
    r = cell3.borgcfg("up", cfg, master=follower.info["grpc"])
    assert r.returncode == 0, r.stderr
    # Each replica's OWN state (--stale: a consistent read on a follower is forwarded to the
    # leader, which would read the leader three times): the job, and its task running, the
    # same on all three once each has applied the log.
    wait_for(
        lambda: cell3.borgcfg_json(
            "status", "viafollower", "--stale", master=follower.info["grpc"]
        ),
        10,
        what="the job in the follower's own state (borgcfg status --stale)",
    )
    wait_for(lambda: own_views_agree(cell3, "viafollower", running=1), 20, what="replicas agree")
    assert cell3.borgcfg("down", "viafollower", "--wait").returncode == 0


def own_view(addr: str, job: str) -> tuple[object, ...] | None:
    """What one replica's own store says of a job (stale read: never forwarded)."""
    with grpc.insecure_channel(addr) as ch:
        try:
            j = borg_pb2_grpc.BorgmasterStub(ch).GetJob(
                pb.GetJobRequest(name=job, options=pb.ReadOptions(stale=True)), timeout=5
            )
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
    tasks = tuple((t.index, t.state, t.machine, t.version, t.incarnation) for t in j.tasks)
    return (j.name, j.user, j.priority, j.replicas, j.version, j.state, tasks)


def own_views_agree(cell: Cell, job: str, running: int) -> bool:
    """Every replica's own view of `job` is the same, with `running` tasks running."""
    views = [own_view(m.info["grpc"], job) for m in cell.masters]
    first = views[0]
    if first is None or any(v != first for v in views):
        return False
    tasks = first[-1]
    assert isinstance(tasks, tuple)
    return sum(1 for t in tasks if t[1] == "running") == running


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"name": "../x", "command": ["true"]}, "name"),
        ({"name": "neg", "command": ["true"], "requirements": {"ram": "-5Mi"}}, "ram"),
        ({"name": "zero", "command": ["true"], "replicas": 0}, "replicas"),
        ({"name": "typo", "command": ["true"], "replica": 2}, "did you mean 'replicas'"),
    ],
)
def test_master_rejects_invalid_spec_from_raw_client(
    cell3: Cell, spec: dict[str, object], fragment: str
) -> None:
    before = cell3.borgcfg_json("status")
    with grpc.insecure_channel(cell3.masters[1].info["grpc"]) as ch:
        stub = borg_pb2_grpc.BorgmasterStub(ch)
        with pytest.raises(grpc.RpcError) as ei:
            stub.SubmitJob(pb.SubmitJobRequest(spec=struct_from(spec), user="raw"), timeout=10)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (ei.value.details() or "")
    assert cell3.borgcfg_json("status") == before


def test_bad_config_is_one_line_exit_1_and_nothing_submitted(cell3: Cell, tmp_path: Path) -> None:
    before = cell3.borgcfg_json("status")
    cases = {
        "syntax.yaml": "name: x\ncommand: [unclosed\n",
        "unknown.yaml": "name: x\ncommand: ['true']\nreplica: 2\n",
        "neg.yaml": "name: x\ncommand: ['true']\nrequirements:\n  ram: -5Mi\n",
        "zero.yaml": "name: x\ncommand: ['true']\nreplicas: 0\n",
        "badname.yaml": "name: ../x\ncommand: ['true']\n",
        "syntax.jsonnet": "{ name: 'x', command: ['true'] ",
    }
    for fname, text in cases.items():
        path = write(tmp_path, fname, text)
        for cmd in ("validate", "up"):
            r = cell3.borgcfg(cmd, path)
            assert r.returncode == 1, (fname, cmd, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1, (fname, r.stderr)
            assert fname in lines[0], (fname, lines[0])
            assert "Traceback" not in r.stderr
    assert cell3.borgcfg_json("status") == before


def test_killing_unknown_job_is_exit_1(cell3: Cell) -> None:
    r = cell3.borgcfg("down", "no-such-job")
    assert r.returncode == 1
    assert "no-such-job" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unreachable_cell_is_exit_3_naming_addresses(cell3: Cell) -> None:
    r = cell3.borgcfg("status", master="127.0.0.1:1,127.0.0.1:2", timeout=60)
    assert r.returncode == 3
    assert "127.0.0.1:1" in r.stderr and "127.0.0.1:2" in r.stderr


def test_batch_job_succeeds_and_reports_exit_codes(cell3: Cell, tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "b.yaml",
        "name: batchy\nkind: batch\nreplicas: 3\nrun_as: nobody\n"
        "command: 'echo done $BORG_TASK_INDEX'\n",
    )
    r = cell3.borgcfg("up", cfg, "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    job = cell3.job("batchy")
    assert job["state"] == "succeeded"
    assert [t["exit_code"] for t in job["tasks"]] == [0, 0, 0]
    out = json.loads(json.dumps(job))
    assert out["kind"] == "batch"


def test_http_and_grpc_health_endpoints(cell3: Cell) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    for m in cell3.masters:
        assert cell3.http_get(m.info["http"], "/healthz")[0] == 200
        assert cell3.http_get(m.info["http"], "/readyz")[0] == 200
        code, body = cell3.http_get(m.info["http"], "/metrics")
        assert code == 200 and "borg_raft_term" in body
        code, page = cell3.http_get(m.info["http"], "/")
        assert code == 200 and "borgcell" in page and m.name in page
        with grpc.insecure_channel(m.info["grpc"]) as ch:
            h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert h.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            req = reflection_pb2.ServerReflectionRequest(list_services="")
            resp = next(iter(stub.ServerReflectionInfo(iter([req]), timeout=5)))
            names = {s.name for s in resp.list_services_response.service}
            assert "borg.v1.Borgmaster" in names
    # Cell-wide gauges come from the leader only, so replicas are not double counted.
    leader = cell3.leader()
    for m in cell3.masters:
        body = cell3.http_get(m.info["http"], "/metrics")[1]
        assert ('borg_machines{state="up"} 1.0' in body) == (m is leader)
    b = cell3.borglets[0]
    assert cell3.http_get(b.info["http"], "/healthz")[0] == 200
    code, body = cell3.http_get(b.info["http"], "/metrics")
    assert code == 200 and "borg_machine_capacity" in body


def test_tasks_of_a_job_with_a_spec_near_1_mib_all_run_on_one_machine(
    cell3: Cell, tmp_path: Path
) -> None:
    """Five tasks of a ~880 KB spec on one Borglet: with the spec repeated per task the Sync
    reply was ~4.4 MB, over gRPC's 4 MiB default, and the Borglet never got its tasks."""
    env = {f"BIG{i}": "x" * 110_000 for i in range(8)}  # each under exec's 128 KiB per string
    cfg = tmp_path / "bigspec.json"
    cfg.write_text(
        json.dumps(
            {
                "name": "bigspec",
                "replicas": 5,
                "run_as": "nobody",
                "command": "sleep 100000",
                "env": env,
                "requirements": {"cpu": 0.05, "ram": "24Mi"},
            }
        )
    )
    r = cell3.borgcfg("up", str(cfg), "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert running(cell3, "bigspec", 5)
    assert cell3.borgcfg("down", "bigspec").returncode == 0
