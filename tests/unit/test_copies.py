"""LiveCopies: what the scheduler consults so that one task index never runs twice."""

from __future__ import annotations

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
