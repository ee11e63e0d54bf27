"""LiveCopies: what the scheduler consults so that one task index never runs twice."""

from __future__ import annotations

import random

from borgmaster.copies import LiveCopies


def test_a_reported_copy_holds_its_index_until_a_report_drops_it() -> None:
    c = LiveCopies()
    assert not c.heard_from(["m1"])
    # A machine's first report to this leader releases what was held for want of it.
    assert c.observe("m1", [("web", 0, "a1", "running"), ("web", 1, "b1", "running")])
    assert c.heard_from(["m1"])
    assert c.elsewhere(("web", 0), set()) == "m1"
    assert c.elsewhere(("web", 2), set()) == ""
    # The old copy of web/0 is being stopped: still alive, nothing released.
    assert not c.observe("m1", [("web", 0, "a1", "running"), ("web", 1, "b1", "running")])
    # Its Borglet reports it killed (kept in the list until the master acknowledges).
    assert c.observe("m1", [("web", 0, "a1", "killed"), ("web", 1, "b1", "running")])
    assert c.elsewhere(("web", 0), set()) == ""
    assert c.elsewhere(("web", 1), set()) == "m1"


def test_a_copy_replaced_by_another_incarnation_counts_as_gone() -> None:
    c = LiveCopies()
    c.observe("m1", [("web", 0, "a1", "running")])
    assert c.observe("m1", [("web", 0, "a2", "running")])
    assert c.elsewhere(("web", 0), set()) == "m1"


def test_lost_machines_are_ignored_and_forgotten() -> None:
    c = LiveCopies()
    c.observe("m1", [("db", 0, "x", "running")])
    c.observe("m2", [("db", 1, "y", "running")])
    assert c.elsewhere(("db", 0), {"m1"}) == ""
    assert c.forget("m1")
    assert not c.forget("m1")
    assert c.elsewhere(("db", 0), set()) == ""
    c.clear()
    assert c.elsewhere(("db", 1), set()) == ""


def test_elsewhere_agrees_with_a_scan_of_every_machine_through_any_sequence() -> None:
    """The reverse index (index -> machines) never disagrees with the per-machine sets."""
    rng = random.Random(7)
    c = LiveCopies()
    machines = [f"m{i}" for i in range(6)]
    keys = [("web", i) for i in range(8)]
    for step in range(3000):
        op = rng.random()
        m = rng.choice(machines)
        if op < 0.5:
            report = [
                (j, i, f"inc{rng.randrange(3)}", rng.choice(["running", "killed", "starting"]))
                for j, i in rng.sample(keys, rng.randrange(len(keys)))
            ]
            c.observe(m, report)
        elif op < 0.75:
            c.sent(m, [(j, i, "new") for j, i in rng.sample(keys, rng.randrange(3))])
        elif op < 0.95:
            c.forget(m)
        else:
            c.clear()
        ignore = set(rng.sample(machines, rng.randrange(3)))
        for key in keys:
            having = {
                name for name, alive in c._by_machine.items() if key in alive and name not in ignore
            }
            got = c.elsewhere(key, ignore)
            assert (got in having) if having else got == "", (step, key, got, having)
    assert sum(len(ms) for ms in c._where.values()) == sum(
        len(alive) for alive in c._by_machine.values()
    )
