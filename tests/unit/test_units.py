"""Sizes and durations: the spellings users write, and exact round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cfg.units import (
    format_amount,
    format_duration,
    format_size,
    human_size,
    parse_duration_ms,
    parse_size,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        (" 64Mi ", 64 << 20),
        ("1Ki", 1024),
        ("64Mi", 64 << 20),
        ("2Gi", 2 << 30),
        ("1Ti", 1 << 40),
        ("1.5Gi", 3 << 29),
        (".5Ki", 512),
        ("1.0001Ki", 1025),  # fractional bytes round up: a request is never shrunk
        (67108864.0, 64 << 20),  # protobuf Struct numbers are doubles
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-5Mi", "'-5Mi' is not a size"),
        (-1, "-1 is not a size"),
        ("64MB", "'64MB' is not a size"),
        ("64mi", "'64mi' is not a size"),
        ("Mi", "'Mi' is not a size"),
        ("", "'' is not a size"),
        ("1e3", "'1e3' is not a size"),
        (True, "expected a size like '64Mi', got bool"),
        (None, "expected a size like '64Mi', got NoneType"),
        ([1], "expected a size like '64Mi', got list"),
        (float("nan"), "nan is not a size"),
        (float("inf"), "inf is not a size"),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_size(value)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("500ms", 500),
        ("1s", 1000),
        ("1.5s", 1500),
        ("1m30s", 90_000),
        ("2h", 7_200_000),
        ("1h1m1s1ms", 3_661_001),
        ("0s", 0),
        (5, 5000),
        (0.25, 250),
        ("5", 5000),
        ("2.5", 2500),
        (10.0, 10_000),
    ],
)
def test_parse_duration(value: object, expected: int) -> None:
    assert parse_duration_ms(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1s", "'-1s' is not a duration"),
        (-1, "-1 is not a duration"),
        ("1d", "'1d' is not a duration"),
        ("5 s", "'5 s' is not a duration"),
        ("s", "'s' is not a duration"),
        ("", "'' is not a duration"),
        (False, "expected a duration like '10s', got bool"),
        ({}, "expected a duration like '10s', got dict"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_duration_ms(value)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (1000, "1000"),
        (1024, "1Ki"),
        (67108864, "64Mi"),
        (3 << 29, "1536Mi"),
        (1 << 40, "1Ti"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (500, "500ms"),
        (1000, "1s"),
        (1500, "1s500ms"),
        (90_000, "1m30s"),
        (7_200_000, "2h"),
    ],
)
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration(ms) == text


def test_format_rejects_negative() -> None:
    with pytest.raises(ValueError):
        format_size(-1)
    with pytest.raises(ValueError):
        format_duration(-1)


@given(st.integers(min_value=0, max_value=1 << 60))
def test_size_round_trip(n: int) -> None:
    assert parse_size(format_size(n)) == n


@given(st.integers(min_value=0, max_value=10**12))
def test_duration_round_trip(ms: int) -> None:
    assert parse_duration_ms(format_duration(ms)) == ms


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (1000, "1000"),
        (1024, "1Ki"),
        (1536, "1.5Ki"),
        (64 << 20, "64Mi"),
        (20186000000, "18.8Gi"),
        (int(1.25 * 2**30), "1.25Gi"),
        (300 << 30, "300Gi"),
        (5 << 50, "5Pi"),
        (-3, "0"),
    ],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


@pytest.mark.parametrize(
    ("resource", "amount", "text"),
    [
        ("cpu", 0.5, "0.5"),
        ("cpu", -1, "unlimited"),
        ("ram", 512 << 20, "512Mi"),
        ("disk", 1.5 * 2**30, "1.5Gi"),
        ("gpu", 2, "2"),
        ("ram", -1, "unlimited"),
    ],
)
def test_format_amount(resource: str, amount: float, text: str) -> None:
    """One spelling for quota amounts, in borgcfg's tables and the master's messages."""
    assert format_amount(resource, amount) == text
