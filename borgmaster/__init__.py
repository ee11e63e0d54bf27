"""The Borgmaster: replicated cell state (PySyncObj Raft), scheduler, controllers and API."""

from __future__ import annotations

import _socket
import socket

import pysyncobj.win_inet_pton  # noqa: F401  (imported for its side effect, undone below)

# PySyncObj's win_inet_pton replaces socket.inet_ntop with a Windows-only ctypes version on
# every platform, breaking anything in the process that formats an IPv4/IPv6 address (psutil's
# connection list, for one). Put the C implementations back.
socket.inet_ntop = _socket.inet_ntop
socket.inet_pton = _socket.inet_pton
