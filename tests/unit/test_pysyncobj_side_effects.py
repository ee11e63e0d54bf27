"""Importing PySyncObj must not break the process's socket module (it patches inet_ntop)."""

from __future__ import annotations

import socket

import pysyncobj  # noqa: F401

import borgmaster  # noqa: F401


def test_inet_ntop_works_after_importing_pysyncobj_and_borgmaster() -> None:
    assert socket.inet_ntop(socket.AF_INET, b"\x7f\x00\x00\x01") == "127.0.0.1"
    assert socket.inet_ntop(socket.AF_INET6, b"\x00" * 15 + b"\x01") == "::1"
    assert socket.inet_pton(socket.AF_INET, "10.0.0.1") == b"\n\x00\x00\x01"
