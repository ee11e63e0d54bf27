"""Port assignment for starting and restarting tasks (pure, with a fake `is_free`), and the
host probe `bindable` against real sockets on both address families."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from borglet.ports import PortAllocator, bindable


def test_restart_keeps_the_masters_port_while_it_is_free() -> None:
    a = PortAllocator(100, 110)
    got = a.assign(["http", "admin"], [{"http": 105, "admin": 106}], set(), lambda p: True)
    assert got == {"http": 105, "admin": 106}


def test_restart_gets_a_new_port_when_its_old_one_is_taken_on_the_host() -> None:
    a = PortAllocator(100, 110)
    got = a.assign(["http", "admin"], [{"http": 105, "admin": 106}], set(), lambda p: p != 105)
    assert got["admin"] == 106
    assert got["http"] != 105 and 100 <= got["http"] <= 110 and got["http"] != 106


def test_restart_falls_back_to_its_own_last_port_before_a_new_one() -> None:
    # The master still names the port the task had before its last move to a new one.
    a = PortAllocator(100, 110)
    got = a.assign(["http"], [{"http": 105}, {"http": 107}], set(), lambda p: p != 105)
    assert got == {"http": 107}


def test_a_port_another_live_task_holds_is_never_kept() -> None:
    a = PortAllocator(100, 110)
    got = a.assign(["http"], [{"http": 105}], {105}, lambda p: True)
    assert got == {"http": 100}


def test_two_names_never_share_a_prior_port() -> None:
    a = PortAllocator(100, 110)
    got = a.assign(["a", "b"], [{"a": 105, "b": 105}], set(), lambda p: True)
    assert got["a"] == 105 and got["b"] != 105


def test_assign_only_returns_the_names_asked_for() -> None:
    a = PortAllocator(100, 110)
    got = a.assign(["http"], [{"http": 103, "old": 104}], set(), lambda p: True)
    assert got == {"http": 103}


def test_exhausted_range_on_restart_is_a_clear_error() -> None:
    a = PortAllocator(100, 100)
    with pytest.raises(ValueError, match="no free port left in 100-100"):
        a.assign(["http"], [{"http": 100}], set(), lambda p: False)


# ----- the host probe ----------------------------------------------------------------------


def _listen(family: socket.AddressFamily, host: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, 0))
    s.listen()
    return s


@pytest.fixture
def v4() -> Iterator[socket.socket]:
    s = _listen(socket.AF_INET, "127.0.0.1")
    yield s
    s.close()


def test_bindable_sees_a_loopback_listener_and_its_release(v4: socket.socket) -> None:
    port = v4.getsockname()[1]
    assert not bindable(port)
    v4.close()
    assert bindable(port)


def test_bindable_sees_an_ipv6_only_listener() -> None:
    try:
        s = _listen(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    with s:
        assert not bindable(s.getsockname()[1])


def test_bindable_ignores_time_wait_leftovers() -> None:
    """A task's earlier run that served connections leaves TIME_WAIT sockets behind on its
    port; the restarted task (servers set SO_REUSEADDR) can bind it, so it keeps its port."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()  # the server side closes first: its socket goes to TIME_WAIT
    cli.close()
    srv.close()
    assert bindable(port)
