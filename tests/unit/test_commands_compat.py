"""Typed commands read the v1 wire format: entries written by the untyped commands.

tests/data/commands-v1.msgpack holds 37 Raft entries encoded by the code from before typed
nested commands (commit edef253; tests/data/make_commands_v1.py made them from a worktree of
that commit): every command type, with placements, preemptions, failures, task updates with
and without ports, specs, machines, partial quota limits, a fenced stale plan and a Batch.
tests/data/commands-v1.json holds what that code's Store answered and its final digest, and
commands-v1.snapshot.msgpack its snapshot. A journal of an existing data dir must replay to
the same state with today's code, and decoding must lose nothing (re-encoding gives the same
bytes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from borgmaster import commands as C
from borgmaster.store import Store

DATA = Path(__file__).resolve().parent.parent / "data"


def _entries() -> list[bytes]:
    entries = msgpack.unpackb((DATA / "commands-v1.msgpack").read_bytes(), raw=False)
    assert isinstance(entries, list) and all(isinstance(e, bytes) for e in entries)
    return entries


def _expected() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / "commands-v1.json").read_text())
    return doc


def _replay() -> tuple[Store, list[Any]]:
    store = Store()
    results = [store.apply(e, i) for i, e in enumerate(_entries(), start=1)]
    return store, results


def test_fixture_covers_every_command_type() -> None:
    kinds = {C.decode(e).type for e in _entries()}
    batch = next(C.decode(e) for e in _entries() if e[0] == C.CommandType.BATCH)
    assert isinstance(batch, C.Batch)
    kinds |= {C.decode(e).type for e in batch.entries}
    assert kinds == set(C.CommandType) - SINCE_V1_COMMANDS


# Command types added since v1 (no v1 journal can hold them).
SINCE_V1_COMMANDS = {
    C.CommandType.PROMOTE,
    C.CommandType.REVERT_ROLLOUT,
    C.CommandType.LAUNCH_PERIODIC,
}

# State recorded since v1: each job's version records (`borgcfg history`). A v1 journal
# replayed today records them too; everything else must be byte for byte what v1 had.
SINCE_V1_JOB_FIELDS = ("versions",)


def _v1_view(snapshot: bytes) -> bytes:
    """The snapshot without the state added since v1 (same msgpack encoding otherwise)."""
    doc = msgpack.unpackb(snapshot, raw=False, strict_map_key=False)
    for j in doc["jobs"]:
        for k in SINCE_V1_JOB_FIELDS:
            j.pop(k, None)
    return bytes(msgpack.packb(doc, use_bin_type=True))


def test_v1_journal_replays_to_the_same_state() -> None:
    expected = _expected()
    store, results = _replay()
    # Same answers entry by entry (msgpack-free comparison: through JSON like the fixture).
    assert json.loads(json.dumps(results)) == expected["results"]
    snapshot = _v1_view(store.snapshot_bytes(include_index=False))
    assert hashlib.sha256(snapshot).hexdigest() == expected["digest"]
    assert snapshot == (DATA / "commands-v1.snapshot.msgpack").read_bytes()
    assert hashlib.sha256(snapshot).hexdigest() == expected["snapshot_sha256"]
    # Key state, spelled out so a failure says what moved.
    tasks = {
        f"{j}/{i}": [t.state, t.machine, t.incarnation, t.version, t.reason]
        for (j, i), t in sorted(store.tasks.items())
    }
    assert tasks == expected["tasks"]
    jobs = {n: [j.state, j.version, j.rollout, j.killed] for n, j in sorted(store.jobs.items())}
    assert jobs == expected["jobs"]
    assert {n: m.state for n, m in sorted(store.machines.items())} == expected["machines"]
    quotas = {f"{u}/{b}": q.to_dict() for (u, b), q in sorted(store.quotas.items())}
    assert quotas == expected["quotas"]
    assert store.fence_term == expected["fence_term"]
    assert len(store.events) == expected["events"]
    # The version records the replay made: every job remembers its current version.
    for j in store.jobs.values():
        assert j.versions and j.versions[-1].version == j.version
        assert j.versions[-1].spec == j.spec


def test_v1_snapshot_loads_and_matches_the_replay() -> None:
    loaded = Store()
    loaded.load_snapshot((DATA / "commands-v1.snapshot.msgpack").read_bytes())
    assert loaded.digest() == _expected()["digest"]


@pytest.mark.parametrize("n", range(37))
def test_v1_entry_decodes_typed_and_re_encodes_to_the_same_bytes(n: int) -> None:
    entry = _entries()[n]
    cmd = C.decode(entry)
    assert C.encode(cmd) == entry
    if isinstance(cmd, C.Batch):
        for inner in cmd.entries:
            assert C.encode(C.decode(inner)) == inner


def test_v1_nested_parts_decode_to_their_types() -> None:
    cmds = [C.decode(e) for e in _entries()]
    plans = [c for c in cmds if isinstance(c, C.ApplyPlan)]
    assert all(isinstance(p, C.Placement) for c in plans for p in c.placements)
    assert all(isinstance(f, C.PlanFailure) for c in plans for f in c.failures)
    preemptions = [p for c in plans for p in c.preemptions]
    assert preemptions == [
        C.Preemption("filler", 0, "f0a", "m3", "preempted by web/2 (priority 200)")
    ]
    updates = [u for c in cmds if isinstance(c, C.TaskUpdates) for u in c.updates]
    assert all(isinstance(u, C.TaskUpdate) for u in updates)
    killed = next(u for u in updates if u.state == "killed")
    assert killed.ports is None and killed.restarts == 0  # v1 sent no ports for it
    quotas = [c.limit for c in cmds if isinstance(c, C.SetQuota)]
    assert quotas[1] == C.QuotaLimit(cpu=12.0, gpu=-1)  # only what was given
    replace = [c for c in cmds if isinstance(c, C.ReplaceTasks)]
    assert replace[1].tasks == [C.TaskRef(1, "w1a"), C.TaskRef(1, "not-current")]
    submit = next(c for c in cmds if isinstance(c, C.SubmitJob))
    assert submit.spec.name == "web" and submit.spec.requirements.ports == ["http"]
    machine = next(c for c in cmds if isinstance(c, C.RegisterMachine))
    assert machine.machine.capacity.cpu == 4.0 and machine.machine.task_users == [
        "nobody",
        "alice",
    ]
