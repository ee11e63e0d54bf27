"""The Borglet's side of `unchanged` Sync replies (borglet/link.py `MasterLink.desired_set`):
an idle heartbeat keeps the desired set held, anything else replaces or drops it."""

from __future__ import annotations

from typing import Any

from borglet.checkpoint import Written
from borglet.link import FULL_SET_EVERY_S, MasterLink
from proto.borg.v1 import borg_pb2 as pb
from tests.unit.test_linkstream import link_config


class Host:
    def state_written(self, wait_s: float) -> Written:
        return Written.YES

    def reports(self) -> list[dict[str, Any]]:
        return []

    def offered_gpus(self) -> list[str]:
        return []

    def on_desired(self, *a: Any) -> None:
        pass


def test_unchanged_keeps_the_set_held_and_full_sets_come_back(tmp_path: Any) -> None:
    lk = MasterLink(link_config("n1", str(tmp_path)), Host(), [])
    req, _ = lk.request(1000)
    assert not req.accepts_unchanged  # nothing held: the full set
    full = pb.SyncResponse(
        generation=5, tasks=[pb.DesiredTask(job="a", index=0, incarnation="i", version=1)]
    )
    full.tasks[0].spec.update({"name": "a", "command": ["sleep", "1"]})
    held = lk.desired_set(req, full)
    assert held is not None and [d.job for d in held] == ["a"]
    lk._known_generation = 5
    req, _ = lk.request(1000)
    assert req.accepts_unchanged and req.known_generation == 5
    assert lk.desired_set(req, pb.SyncResponse(generation=5, unchanged=True)) is held
    # `unchanged` for another generation than held: dropped, the next request asks for all
    assert lk.desired_set(req, pb.SyncResponse(generation=6, unchanged=True)) is None
    assert not lk.request(1000)[0].accepts_unchanged
    # the full set at least every FULL_SET_EVERY_S
    lk.desired_set(req, full)
    lk._full_at -= FULL_SET_EVERY_S
    assert not lk.request(1000)[0].accepts_unchanged
