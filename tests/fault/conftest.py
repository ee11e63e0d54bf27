"""Fixtures for the fault tests: a fresh 3-master cell (no Borglets) per test, because every
test here damages its cell on purpose."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster import Cell
from tests.fault.util import Stubs


@pytest.fixture
def cell(request: pytest.FixtureRequest) -> Iterator[Cell]:
    c = Cell()
    try:
        c.start(masters=3, borglets=0)
    except Exception:
        print(c.dump_logs())
        c.close()
        raise
    yield c
    for m in c.masters:  # a test may leave a replica SIGSTOPped
        if m.popen is not None and m.popen.poll() is None:
            m.signal(18)  # SIGCONT
    c.close()


@pytest.fixture
def stubs() -> Iterator[Stubs]:
    s = Stubs()
    yield s
    s.close()
