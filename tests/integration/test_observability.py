"""Observability of a real cell (3 masters + 1 Borglet): /metrics on every component, checked
by promtool and scraped by a real Prometheus; the web UI over HTTP; JSON logs.

Tools that may be missing (promtool, prometheus) skip their tests with a message saying what
to install; everything else runs on any host where the cell can run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import REPO, Cell, Proc, free_port, wait_for

pytestmark = [pytest.mark.e2e]

PROM_DIR = Path(REPO) / "docs" / "prometheus"
NO_PROMTOOL = "promtool not installed (Debian: apt-get install prometheus)"
NO_PROMETHEUS = "prometheus not installed (Debian: apt-get install prometheus)"


# ----- helpers ---------------------------------------------------------------------------


def metrics(cell: Cell, addr: str) -> dict[str, Any]:
    code, text = cell.http_get(addr, "/metrics")
    assert code == 200
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], name: str, **labels: str) -> float | None:
    """The value of sample `name` with these labels (summed over other labels), or None."""
    family = fams.get(name.removesuffix("_total")) or fams.get(name)
    if family is None:
        return None
    vals = [
        s.value
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return float(sum(vals)) if vals else None


def running_in_cell(cell: Cell) -> int:
    return sum(int(j["running"]) for j in cell.borgcfg_json("status"))


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.fixture(scope="module")
def obs_job(cell3: Cell, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A two-replica service that prints, plus a job too big to place (for "why pending?")."""
    d = tmp_path_factory.mktemp("obs")
    cfg = write(
        d,
        "obs.yaml",
        "name: obs\nreplicas: 2\nrun_as: nobody\n"
        "command: 'while true; do echo obs-says-hello; sleep 1; done'\n"
        "requirements: {cpu: 0.1, ram: 32Mi}\n",
    )
    r = cell3.borgcfg("up", cfg, "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    huge = write(
        d,
        "huge.yaml",
        "name: huge\nreplicas: 1\nrun_as: nobody\npriority: 120\ncommand: 'sleep 100'\n"
        "requirements: {cpu: 64, ram: 32Mi}\n",
    )
    assert cell3.borgcfg("up", huge).returncode == 0
    wait_for(
        lambda: cell3.job("huge")["tasks"][0]["reason"].startswith("no-feasible-machine"),
        15,
        what="huge pending with a reason",
    )
    return "obs"


# ----- master and Borglet /metrics ---------------------------------------------------------


def test_each_replica_reports_its_raft_state_and_only_the_leader_the_cell(
    cell3: Cell, obs_job: str
) -> None:
    leaders = 0
    terms = set()
    for m in cell3.masters:
        fams = metrics(cell3, m.info["http"])
        for name in ("borg_raft_term", "borg_raft_commit_index", "borg_raft_applied_index"):
            assert fams[name].type == "gauge", name
        assert fams["borg_api_requests"].type == "counter"
        assert fams["borg_api_request_duration_seconds"].type == "histogram"
        assert fams["borg_scheduling_latency_seconds"].type == "histogram"
        terms.add(sample(fams, "borg_raft_term"))
        if sample(fams, "borg_raft_is_leader") == 1:
            leaders += 1
            for name in ("borg_jobs", "borg_tasks", "borg_machines", "borg_pending_tasks"):
                assert fams[name].type == "gauge", name
            assert {s.labels["resource"] for s in fams["borg_cell_capacity"].samples} >= {
                "cpu",
                "ram",
            }
        else:
            assert "borg_tasks" not in fams, f"follower {m.name} double counts the cell"
    assert leaders == 1
    assert len(terms) == 1


def test_leader_metrics_match_the_cell_after_a_submission(cell3: Cell, obs_job: str) -> None:
    leader = cell3.leader()

    def matches() -> bool:
        fams = metrics(cell3, leader.info["http"])
        return sample(fams, "borg_tasks", state="running") == running_in_cell(cell3)

    wait_for(matches, 15, what="borg_tasks{state=running} == running tasks")
    fams = metrics(cell3, leader.info["http"])
    assert sample(fams, "borg_jobs", state="running") is not None
    assert (sample(fams, "borg_jobs", state="running") or 0) >= 1
    assert sample(fams, "borg_machines", state="up") == 1
    assert sample(fams, "borg_cell_capacity", resource="cpu") == 2.0
    assert (sample(fams, "borg_cell_allocated", resource="cpu") or 0) >= 0.2 - 1e-9
    assert (sample(fams, "borg_pending_tasks", band="batch") or 0) >= 1  # huge
    assert (sample(fams, "borg_pending_tasks_oldest_age_seconds", band="batch") or 0) > 0
    assert (sample(fams, "borg_scheduler_placements_total") or 0) >= 2
    # The submit went through some replica: the cell's API counters saw it.
    submits = 0.0
    for m in cell3.masters:
        mf = metrics(cell3, m.info["http"])
        submits += sample(mf, "borg_api_requests_total", method="SubmitJob") or 0
    assert submits >= 2
    # Borglet: per-task cpu and memory, read from the task cgroups.
    bf = metrics(cell3, cell3.borglets[0].info["http"])
    for i in ("0", "1"):
        assert sample(bf, "borg_task_cpu_seconds_total", job="obs", index=i) is not None
        assert (sample(bf, "borg_task_memory_bytes", job="obs", index=i) or 0) > 0
    assert sample(bf, "borg_machine_capacity", resource="cpu") == 2.0


def test_oom_kills_and_restarts_are_counted_by_the_borglet(cell3: Cell, tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "hog.yaml",
        "name: obshog\nrun_as: nobody\nrestart: {policy: on-failure, max_restarts: 50, "
        "backoff: 100ms}\n"
        "command: ['python3', '-c', 'x = [bytearray(1 << 20) for _ in range(1000)]']\n"
        "requirements: {cpu: 0.2, ram: 24Mi}\n",
    )
    assert cell3.borgcfg("up", cfg).returncode == 0
    b = cell3.borglets[0].info["http"]

    def counted() -> tuple[float, float] | None:
        fams = metrics(cell3, b)
        ooms = sample(fams, "borg_task_oom_kills_total", job="obshog", index="0") or 0
        restarts = sample(fams, "borg_task_restarts_total", job="obshog", index="0") or 0
        return (ooms, restarts) if ooms >= 2 and restarts >= 1 else None

    ooms, restarts = wait_for(counted, 40, interval=0.2, what="OOM kills and a restart counted")
    assert ooms >= restarts >= 1
    # The master's view agrees: the task restarted after dying of OOM.
    t = wait_for(lambda: (t := cell3.job("obshog")["tasks"][0])["restarts"] >= 1 and t, 15)
    assert t["restarts"] >= 1
    assert cell3.borgcfg("down", "obshog", "--wait", "--timeout", "30").returncode == 0


# ----- promtool ----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None, reason=NO_PROMTOOL)
def test_promtool_lints_every_components_metrics_clean(cell3: Cell, obs_job: str) -> None:
    for p in cell3.masters + cell3.borglets:
        code, text = cell3.http_get(p.info["http"], "/metrics")
        assert code == 200
        r = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        out = (r.stdout + r.stderr).strip()
        assert r.returncode == 0 and not out, f"{p.name}: {out}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason=NO_PROMTOOL)
def test_promtool_accepts_the_shipped_rules_and_configs() -> None:
    def ok(*argv: str) -> str:
        r = subprocess.run(
            ["promtool", *argv], capture_output=True, text=True, timeout=60, cwd=PROM_DIR
        )
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    assert "SUCCESS" in ok("check", "rules", "alerts.yml")
    ok("test", "rules", "alerts_test.yml")  # the alerts fire on the scenarios they describe
    ok("check", "config", "prometheus.yml")
    ok("check", "config", "prometheus-file-sd.yml")
    for f in (PROM_DIR / "targets").glob("*.json"):
        assert all(g["targets"] for g in json.loads(f.read_text()))


# ----- a real Prometheus -------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(cell3: Cell) -> Iterator[str]:
    """Prometheus on a loopback port scraping the cell every second; yields its address."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(NO_PROMETHEUS)
    work = tempfile.mkdtemp(prefix="borgcell-prom-")
    shutil.copy(PROM_DIR / "alerts.yml", os.path.join(work, "alerts.yml"))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {
                "job_name": "borgmaster",
                "static_configs": [{"targets": [m.info["http"] for m in cell3.masters]}],
            },
            {
                "job_name": "borglet",
                "static_configs": [{"targets": [b.info["http"] for b in cell3.borglets]}],
            },
        ],
    }
    with open(os.path.join(work, "prometheus.yml"), "w") as f:
        yaml.safe_dump(config, f)
    addr = f"127.0.0.1:{free_port()}"
    proc = Proc(
        "prometheus",
        [
            binary,
            f"--config.file={work}/prometheus.yml",
            f"--storage.tsdb.path={work}/data",
            f"--web.listen-address={addr}",
            "--log.level=warn",
        ],
        os.path.join(work, "prometheus.log"),
    )
    proc.start()
    try:

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"prometheus exited:\n{proc.log()[-3000:]}")
            return cell3.http_get(addr, "/-/ready")[0] == 200

        wait_for(ready, 30, what="prometheus ready")
        yield addr
    finally:
        proc.stop(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def promql(addr: str, query: str) -> list[dict[str, Any]]:
    url = f"http://{addr}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def test_real_prometheus_scrapes_every_component_and_sees_the_running_tasks(
    cell3: Cell, obs_job: str, prometheus: str
) -> None:
    targets = {m.info["http"] for m in cell3.masters} | {b.info["http"] for b in cell3.borglets}

    def all_up() -> bool:
        res = promql(prometheus, "up")
        return {r["metric"]["instance"] for r in res if r["value"][1] == "1"} == targets

    wait_for(all_up, 30, interval=0.2, what="up == 1 for every target")
    ups = promql(prometheus, "up")
    assert len(ups) == 4 and all(r["value"][1] == "1" for r in ups)

    def tasks_match() -> bool:
        res = promql(prometheus, 'borg_tasks{state="running"}')
        # One series: only the leader exports cell-wide gauges.
        return len(res) == 1 and float(res[0]["value"][1]) == running_in_cell(cell3)

    wait_for(tasks_match, 30, interval=0.2, what='borg_tasks{state="running"} == running tasks')
    res = promql(prometheus, 'borg_tasks{state="running"}')
    assert float(res[0]["value"][1]) >= 2  # obs's two replicas at least
    leader = cell3.leader()
    assert res[0]["metric"]["instance"] == leader.info["http"]
    # Task metrics keep the Borg job as `exported_job` next to the scrape job.
    cpu = promql(prometheus, 'borg_task_cpu_seconds_total{exported_job="obs"}')
    assert {r["metric"]["index"] for r in cpu} == {"0", "1"}
    assert all(r["metric"]["job"] == "borglet" for r in cpu)


def test_prometheus_loads_the_alert_rules_and_every_dashboard_query(
    cell3: Cell, obs_job: str, prometheus: str
) -> None:
    with urllib.request.urlopen(f"http://{prometheus}/api/v1/rules", timeout=5) as r:
        groups = json.loads(r.read())["data"]["groups"]
    names = {rule["name"] for g in groups for rule in g["rules"]}
    assert {"BorgNoLeader", "BorgMachineLost", "BorgTasksPendingTooLong"} <= names
    assert "BorgTaskOOMKillsRising" in names
    # With a healthy leader, the no-leader alert is not active (an evaluation that ran before
    # the first scrapes landed may have left it pending for a moment: rules run every 1 s).
    wait_for(
        lambda: not promql(prometheus, 'ALERTS{alertname="BorgNoLeader"}'),
        20,
        what="no BorgNoLeader alert",
    )
    dash = json.loads((PROM_DIR / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        promql(prometheus, expr)  # asserts status == success (the query parses and runs)


# ----- the web UI over HTTP ----------------------------------------------------------------


def test_every_replica_serves_the_ui_with_replicas_machines_and_jobs(
    cell3: Cell, obs_job: str
) -> None:
    machine = cell3.borglets[0].info["name"]
    for m in cell3.masters:

        def page_ok(addr: str = m.info["http"]) -> str | None:
            code, body = cell3.http_get(addr, "/")
            return body if code == 200 and "obs" in body and "huge" in body else None

        body = wait_for(page_ok, 15, what=f"{m.name} UI lists the jobs")
        for rid in ("m0", "m1", "m2"):
            assert f"data-replica='{rid}'" in body
        assert "leader" in body and machine in body
        assert "no-feasible-machine" in body  # "why pending?" for huge
        assert '<script src="/ui/app.js"' in body
        code, js = cell3.http_get(m.info["http"], "/ui/app.js")
        assert code == 200 and "partial" in js
        doc = json.loads(cell3.http_get(m.info["http"], "/api/cell")[1])
        assert sorted(r["id"] for r in doc["replicas"]) == ["m0", "m1", "m2"]
        assert [r["role"] for r in doc["replicas"]].count("leader") == 1
        assert doc["replica"]["id"] == m.name


def test_job_page_shows_tasks_why_pending_events_and_logs(cell3: Cell, obs_job: str) -> None:
    addr = cell3.masters[1].info["http"]
    code, body = cell3.http_get(addr, "/jobs/obs")
    assert code == 200
    assert body.count("data-task=") == 2 and "running" in body
    assert "/jobs/obs/logs/0" in body and "Recent events" in body
    code, body = cell3.http_get(addr, "/jobs/huge")
    assert code == 200 and "no-feasible-machine" in body and "id='why'" in body
    doc = json.loads(cell3.http_get(addr, "/api/jobs/obs")[1])
    assert [t["state"] for t in doc["tasks"]] == ["running", "running"]
    assert "submitted" in {e["type"] for e in doc["events"]}  # the job's recent events

    def logs() -> str | None:
        code, body = cell3.http_get(addr, "/jobs/obs/logs/0")
        return body if code == 200 and "obs-says-hello" in body else None

    wait_for(logs, 15, what="task output on the logs page")
    code, raw = cell3.http_get(addr, "/jobs/obs/logs/1?raw=1")
    assert code == 200 and "obs-says-hello" in raw
    assert cell3.http_get(addr, "/jobs/no-such-job")[0] == 404
    assert cell3.http_get(addr, "/jobs/obs/logs/9")[0] == 404


# ----- structured logs ---------------------------------------------------------------------


def test_master_log_format_json_writes_one_json_object_per_line(tmp_path: Path) -> None:
    http = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "borgmaster.cli", "run", "--id", "solo"]
    argv += ["--raft", f"127.0.0.1:{free_port()}", "--grpc", f"127.0.0.1:{free_port()}"]
    argv += ["--http", http, "--data-dir", str(tmp_path / "data"), "--log-format", "json"]
    p = Proc("solo", argv, str(tmp_path / "solo.log"))
    p.start()
    try:
        wait_for(lambda: "became leader" in p.log(), 30, what="a leader log line")
    finally:
        p.signal(signal.SIGTERM)
        rc = p.stop(timeout=15)
    assert rc == 0
    lines = [ln for ln in p.log().splitlines() if ln.strip()]
    assert len(lines) >= 2
    docs = [json.loads(ln) for ln in lines]  # every line parses on its own
    assert all(isinstance(d, dict) and {"ts", "level", "logger", "msg"} <= set(d) for d in docs)
    assert any("became leader" in d["msg"] and d["level"] == "info" for d in docs)
