"""borgcfg's error reporting and `up --wait` readiness, against test_cli.py's fake master:
usage errors as one `borgcfg: ...` line (exit 2), malformed master addresses, a multi-job
`up` rejected part way, `events --job` for an unknown job, the documented event types, and
`--wait` on a task that crash-loops.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from cfg.cli import main
from cfg.cli.wait import job_progress
from proto.borg.v1 import borg_pb2 as pb
from tests.unit.test_cli import (
    HELLO,
    FakeMaster,
    mark_ready,
    one_line_error,
    run,
    serve,
    write,
)

ROOT = Path(__file__).resolve().parents[2]


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def fake() -> Iterator[tuple[FakeMaster, str]]:
    yield from serve(FakeMaster())


# -- 1. usage errors are one line ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["logs", "web"], "borgcfg: logs: TASK must be JOB/INDEX (e.g. web/0), got 'web'"),
        (["why", "x/y"], "borgcfg: why: TASK must be JOB/INDEX (e.g. web/0), got 'x/y'"),
        (
            ["status", "-o", "yaml"],
            "borgcfg: status: invalid value for '-o' / '--output': "
            "'yaml' is not one of 'table', 'json'",
        ),
        (["up"], "borgcfg: up: missing argument FILE"),
        (
            ["quota", "set", "alice", "free", "cpu=1"],
            "borgcfg: quota set: invalid value for BAND: "
            "'free' is not one of 'batch', 'production', 'monitoring'",
        ),
        (["frobnicate"], "borgcfg: no such command 'frobnicate'"),
        (["status", "--bogus"], "borgcfg: status: no such option '--bogus'"),
        (
            ["cell", "add", "nonsense"],
            "borgcfg: cell add: invalid value for RAFT_ADDR: 'nonsense' is not HOST:PORT",
        ),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], line: str) -> None:
    r = run("127.0.0.1:1", *args)
    assert r.exit_code == 2
    assert one_line_error(r) == line
    assert "Usage:" not in r.stderr and "Try " not in r.stderr


def test_bad_key_value_names_the_command_and_flag(tmp_path: Path) -> None:
    f = write(tmp_path, "h.yaml", HELLO)
    r = run("127.0.0.1:1", "validate", f, "--ext-str", "novalue")
    assert r.exit_code == 2
    assert one_line_error(r) == (
        "borgcfg: validate: invalid value for --ext-str: 'novalue' is not KEY=VALUE"
    )


def test_help_is_unchanged_and_not_an_error() -> None:
    r = CliRunner().invoke(main, ["logs", "--help"], prog_name="borgcfg")
    assert r.exit_code == 0
    assert r.stdout.startswith("Usage: borgcfg logs [OPTIONS] TASK\n")
    r = CliRunner().invoke(main, [], prog_name="borgcfg")  # a bare group shows its help
    assert "Usage: borgcfg [OPTIONS] COMMAND [ARGS]..." in r.output
    assert "Error" not in r.output


# -- 2. master addresses are checked up front ---------------------------------------------


@pytest.mark.parametrize(
    ("master", "line"),
    [
        ("abc", "borgcfg: --master: 'abc' is not HOST:PORT"),
        ("127.0.0.1:99999", "borgcfg: --master: '127.0.0.1:99999': port 99999 is not in 1-65535"),
        ("127.0.0.1:0", "borgcfg: --master: '127.0.0.1:0': port 0 is not in 1-65535"),
        ("h:1,h:x", "borgcfg: --master: 'h:x' is not HOST:PORT (port 'x' is not a number)"),
        (",", "borgcfg: --master: no master address given"),
    ],
)
def test_malformed_master_is_usage_error(master: str, line: str) -> None:
    r = run(master, "status")
    assert r.exit_code == 2
    assert one_line_error(r) == line


def test_malformed_borg_master_names_the_variable(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["status"], env={"BORG_MASTER": "127.0.0.1:99999"})
    assert r.exit_code == 2
    assert one_line_error(r) == (
        "borgcfg: BORG_MASTER: '127.0.0.1:99999': port 99999 is not in 1-65535"
    )
    # commands that need no master do not care
    f = write(tmp_path, "h.yaml", HELLO)
    assert CliRunner().invoke(main, ["validate", f], env={"BORG_MASTER": "abc"}).exit_code == 0
    r = CliRunner().invoke(main, ["completion", "bash"], env={"BORG_MASTER": "abc"})
    assert r.exit_code == 0 and "_BORGCFG_COMPLETE" in r.stdout


def test_completion_env_path_still_completes_with_a_bad_master() -> None:
    r = CliRunner().invoke(
        main,
        [],
        env={
            "_BORGCFG_COMPLETE": "bash_complete",
            "COMP_WORDS": "borgcfg status -o ",
            "COMP_CWORD": "3",
            "BORG_MASTER": "abc",
        },
        prog_name="borgcfg",
    )
    assert r.exit_code == 0
    assert "plain,table" in r.stdout and "plain,json" in r.stdout


# -- 3. a multi-job `up` rejected part way ------------------------------------------------


class RejectingMaster(FakeMaster):
    """Rejects (over quota) the jobs named in `reject`."""

    def __init__(self, reject: set[str]) -> None:
        super().__init__()
        self.reject = reject

    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> Any:
        name = request.spec.fields["name"].string_value
        if name in self.reject:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "quota for carol/production exceeded by cpu 0.1",
            )
        return super().SubmitJob(request, context)


THREE = """
- {name: a, command: 'sleep 1'}
- {name: b, command: 'sleep 1'}
- {name: c, command: 'sleep 1'}
"""


def test_up_names_the_rejected_job_and_what_was_applied(tmp_path: Path) -> None:
    fm = RejectingMaster({"b"})
    for _, addr in serve(fm):
        r = run(addr, "up", write(tmp_path, "three.yaml", THREE))
        assert r.exit_code == 1
        assert r.stdout == "job a: created (version 1)\n"
        assert r.stderr.strip() == (
            "borgcfg: job 'b': rejected: quota for carol/production exceeded by cpu 0.1; "
            "already applied: a; not applied: b, c"
        )
        assert set(fm.jobs) == {"a"}  # in file order, stopping at the first rejection


def test_up_first_job_rejected_says_nothing_was_applied(tmp_path: Path) -> None:
    fm = RejectingMaster({"a"})
    for _, addr in serve(fm):
        r = run(addr, "up", write(tmp_path, "three.yaml", THREE))
        assert r.exit_code == 1
        assert one_line_error(r) == (
            "borgcfg: job 'a': rejected: quota for carol/production exceeded by cpu 0.1; "
            "nothing was applied; not applied: a, b, c"
        )
        assert fm.jobs == {}


# -- 4. events for an unknown job ---------------------------------------------------------


def test_events_for_unknown_job_is_exit_1(fake: tuple[FakeMaster, str], tmp_path: Path) -> None:
    fm, addr = fake
    r = run(addr, "events", "--job", "nosuch")
    assert r.exit_code == 1
    assert one_line_error(r) == "borgcfg: job 'nosuch' does not exist"
    r = run(addr, "events", "--job", "nosuch", "-o", "json")
    assert r.exit_code == 1
    # following a job that does not exist yet is legitimate
    assert run(addr, "events", "--job", "nosuch", "-f").exit_code == 0
    # a job the cell has, without events (yet), is not an error
    fm.jobs["quiet"] = pb.Job(name="quiet", state="pending", version=1)
    r = run(addr, "events", "--job", "quiet")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""


# -- 5. the documented event types are the emitted ones -----------------------------------


def emitted_event_types() -> set[str]:
    """Event types borgmaster/store.py can emit: the literal ones, plus the computed ones
    (update kinds, ReplaceTasks reasons the controllers send, observed terminal task states)."""
    store = (ROOT / "borgmaster/store.py").read_text()
    server = (ROOT / "borgmaster/controller_shell.py").read_text()
    types = set(re.findall(r'_event\(\s*"([a-z-]+)"', store))
    types |= set(re.findall(r'_update\([\w.]+, [\w.]+, [\w.]+, "([a-z-]+)"(?:, [\w.]+)*\)', store))
    types |= set(re.findall(r'self\._event\(\s*"([a-z-]+)" if [^"]+ else "([a-z-]+)"', store)[0])
    types |= set(re.findall(r'C\.ReplaceTasks\([^)]*reason="([a-z-]+)"', server))
    from borgmaster.model import TERMINAL_TASK_STATES
    from borgmaster.store import OBSERVED_STATES

    types |= set(OBSERVED_STATES & TERMINAL_TASK_STATES)
    return types


def documented_event_types() -> set[str]:
    doc = (ROOT / "docs/cli.md").read_text()
    section = doc.split("### `events", 1)[1].split("###", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| a ") or ln.startswith("| the")]
    return {t for ln in rows for t in re.findall(r"`([a-z-]+)`", ln.split("|")[2])}


def test_docs_list_exactly_the_event_types_the_cell_emits() -> None:
    emitted = emitted_event_types()
    assert {"died", "rolled-back", "updated", "drained", "failed", "quota-set"} <= emitted
    assert documented_event_types() == emitted


# -- 6. --wait and crash loops ------------------------------------------------------------


def test_job_progress_names_crash_looping_tasks() -> None:
    now = 1_000_000
    job = pb.Job(name="crashy", kind="service", replicas=2, version=1, state="running", ready=1)
    job.tasks.append(
        pb.Task(index=0, state="running", version=1, updated_ms=now - 60_000, ready=True)
    )
    job.tasks.append(
        pb.Task(
            index=1,
            state="running",
            version=1,
            restarts=2,
            exit_code=1,
            reason="exit: 1",
            updated_ms=now - 300,
        )
    )
    p = job_progress(job, "crashy", "up")
    assert (p.done, p.total, p.finished) == (1, 2, False)
    assert p.crash_looping == ["crashy/1 (2 restarts, last: exit: 1)"]
    assert p.detail() == "2 running, 1 crash-looping"


class CrashLoopMaster(FakeMaster):
    """Its tasks run `sleep 0.5; exit 1`: each GetJob finds them restarted once more, just
    now, and reported running (as the Borglet does through a restart backoff)."""

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> Any:
        job = super().GetJob(request, context)
        with self.lock:
            stored = self.jobs[request.name]
            for t in stored.tasks:
                if t.state == "running":
                    t.restarts += 1
                    t.exit_code, t.reason, t.updated_ms = 1, "exit: 1", now_ms()
            job.CopyFrom(stored)
            mark_ready(job)
        return job


def test_up_wait_does_not_call_a_crash_loop_ready(tmp_path: Path) -> None:
    fm = CrashLoopMaster()
    fm.run_after_gets = 0
    crashy = "name: crashy\ncommand: 'sleep 0.5; exit 1'\n"
    for _, addr in serve(fm):
        r = run(addr, "up", write(tmp_path, "c.yaml", crashy), "--wait", "--timeout", "1.5")
        assert r.exit_code == 1
        assert "ready" not in r.stderr
        assert "… crashy: timed out (0/1; 1 running, 1 crash-looping)" in r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert re.fullmatch(
            r"borgcfg: timed out after 1\.5s waiting for crashy; "
            r"crash-looping: crashy/0 \(\d+ restarts?, last: exit: 1\)",
            last,
        ), last


class JustStartedMaster(FakeMaster):
    """Tasks start running (updated_ms = now) and then stay up."""

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> Any:
        with self.lock:
            stored = self.jobs.get(request.name)
            if stored is not None and stored.state == "pending":
                for t in stored.tasks:
                    t.state, t.machine, t.updated_ms = "running", "m1", now_ms()
                stored.state, stored.running = "running", stored.replicas
        return super().GetJob(request, context)


def test_up_wait_counts_a_task_ready_once_up_for_min_ready(tmp_path: Path) -> None:
    fm = JustStartedMaster()
    for _, addr in serve(fm):
        start = time.monotonic()
        r = run(addr, "up", write(tmp_path, "h.yaml", HELLO), "--wait", "--timeout", "10")
        assert r.exit_code == 0, r.stderr
        assert "✓ hello: ready (2/2; 2 running)" in r.stderr
        assert time.monotonic() - start >= 1.0  # not ready at the first sight of "running"


def test_tables_and_lines_are_laid_out_as_rich_laid_them_out() -> None:
    """borgcfg's own renderer (cfg/cli/term.py, no rich import) prints what rich printed for
    the same tables and markup lines off a terminal, escapes included."""
    import io

    from rich.console import Console
    from rich.markup import escape as rich_escape
    from rich.table import Table as RichTable

    from cfg.cli.output import escape, plain_table, show, styled, table
    from cfg.cli.term import Term

    cols = ("INDEX", "STATE", "MACHINE", "REASON")
    rows = [
        (str(i), styled("running" if i % 2 else "pending"), f"machine-{i % 13}", r)
        for i, r in enumerate(["", "oom [exit 137]", "a\\b", "[bold]not a tag", "x" * 40] * 5)
    ]
    ours = table(*cols)
    theirs = RichTable(box=None, header_style="bold", pad_edge=False)
    for c in cols:
        theirs.add_column(c, no_wrap=True, overflow="fold")
    for idx, state, machine, reason in rows:
        ours.add_row(idx, state, escape(machine), escape(reason))
        theirs.add_row(idx, state, rich_escape(machine), rich_escape(reason))
    rich_out = io.StringIO()
    console = Console(file=rich_out, width=500, no_color=True, highlight=False, soft_wrap=True)
    with console.capture() as cap:
        console.print(theirs)
    expected = "\n".join(line.rstrip() for line in cap.get().splitlines()) + "\n"
    out = io.StringIO()
    show(Term(file=out), ours)
    assert out.getvalue() == expected == plain_table(ours)
    line = f"[bold]{escape('web[1]')}/0[/]: {styled('running')} on {escape('m[2]')}"
    with console.capture() as cap:
        console.print(line)
    out = io.StringIO()
    Term(file=out).print(line)
    assert out.getvalue() == cap.get()
    colour = io.StringIO()
    term = Term(file=colour)
    term.is_terminal = True
    term.print(line)
    assert "\x1b[32mrunning\x1b[0m" in colour.getvalue() and "web[1]/0" in colour.getvalue()
