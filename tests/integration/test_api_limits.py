"""The raw API against hostile input (not only borgcfg): whatever a client sends, a real
master answers with a status a client can act on (INVALID_ARGUMENT with a message, or the
request's result), never UNKNOWN or INTERNAL ("Exception calling application"), and it keeps
serving. Limits (SPEC part 2): a spec over 1 MiB encoded, a request over 4 MiB; schema caps on
named ports (64) and command words (4,096), counted before any item is checked."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfg.schema import JOB_KEYS, MAX_ARGS, MAX_PORTS
from cfg.structs import struct_from
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import Cell
from tests.conftest import real_cell

pytestmark = [pytest.mark.e2e]

ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def stub() -> Iterator[borg_pb2_grpc.BorgmasterStub]:
    gen = real_cell(masters=1, borglets=0)
    cell: Cell = next(gen)
    try:
        with grpc.insecure_channel(
            cell.masters[0].info["grpc"],
            options=[("grpc.max_send_message_length", 16 << 20)],
        ) as ch:
            yield borg_pb2_grpc.BorgmasterStub(ch)
    finally:
        gen.close()


def submit(stub: borg_pb2_grpc.BorgmasterStub, spec: Any) -> tuple[grpc.StatusCode, str]:
    req = pb.SubmitJobRequest(user="fuzz")
    if isinstance(spec, dict):
        req.spec.CopyFrom(struct_from(spec))
    else:
        req.spec.CopyFrom(spec)
    try:
        stub.SubmitJob(req, timeout=10)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


def raw_struct(d: dict[str, Any]) -> Any:
    """A Struct holding what json_format refuses to build (NaN, Infinity)."""
    s = pb.SubmitJobRequest().spec
    for k, v in d.items():
        if isinstance(v, dict):
            s.fields[k].struct_value.CopyFrom(raw_struct(v))
        elif isinstance(v, float):
            s.fields[k].number_value = v
        else:
            s.fields[k].string_value = str(v)
    return s


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_invalid_argument(stub: Any, bad: float) -> None:
    spec = raw_struct({"name": "nan", "command": "true", "requirements": {"cpu": bad}})
    code, msg = submit(stub, spec)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, msg)
    assert "NaN" in msg or "Infinity" in msg


def test_a_spec_over_1_mib_is_refused_with_the_limit(stub: Any) -> None:
    env = {f"K{i}": "x" * 1000 for i in range(1200)}  # ~1.2 MiB
    code, msg = submit(stub, {"name": "big", "command": "true", "env": env})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "1 MiB" in msg, (code, msg)


def test_a_request_over_4_mib_is_refused_by_the_server(stub: Any) -> None:
    env = {f"K{i}": "x" * 1000 for i in range(5000)}  # ~5 MiB
    code, _ = submit(stub, {"name": "huge", "command": "true", "env": env})
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def many_ports(n: int) -> dict[str, Any]:
    return {
        "name": "ports",
        "command": "true",
        "requirements": {"ports": [f"p{i}" for i in range(n)]},
    }


def many_words(n: int, where: str) -> dict[str, Any]:
    words = ["true", *(f"w{i}" for i in range(n - 1))]
    if where == "command":
        return {"name": "words", "command": words}
    return {"name": "words", "command": "true", "health": {"exec": words}}


@pytest.mark.parametrize(
    ("spec", "limit"),
    [
        (many_ports(5000), f"5000 ports, over the {MAX_PORTS}"),
        (many_ports(MAX_PORTS + 1), f"{MAX_PORTS + 1} ports, over the {MAX_PORTS}"),
        (many_words(100_000, "health"), f"100000 words, over the {MAX_ARGS}"),
        (many_words(100_000, "command"), f"100000 words, over the {MAX_ARGS}"),
        (many_words(MAX_ARGS + 1, "health"), f"{MAX_ARGS + 1} words, over the {MAX_ARGS}"),
    ],
    ids=["5000-ports", "65-ports", "100k-word-health", "100k-word-command", "4097-word-health"],
)
def test_too_many_ports_or_words_is_invalid_argument_in_one_line(
    stub: Any, spec: dict[str, Any], limit: str
) -> None:
    code, msg = submit(stub, spec)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, msg)
    assert limit in msg and "\n" not in msg and len(msg) < 200, msg


def test_the_caps_themselves_are_accepted(stub: Any) -> None:
    assert submit(stub, many_ports(MAX_PORTS)) == (grpc.StatusCode.OK, "")
    spec = many_words(MAX_ARGS, "health") | {"name": "words-at-cap"}
    assert submit(stub, spec) == (grpc.StatusCode.OK, "")


sizes = st.sampled_from([0, 1, MAX_PORTS, MAX_PORTS + 1, MAX_ARGS, MAX_ARGS + 1, 20_000])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ports=sizes, words=sizes, health_words=sizes)
def test_any_mix_of_list_sizes_gets_an_answer_in_one_line(
    stub: Any, ports: int, words: int, health_words: int
) -> None:
    spec: dict[str, Any] = {
        "name": "sizes",
        "command": ["true"] * words or "true",
        "requirements": {"ports": [f"p{i}" for i in range(ports)]},
    }
    if health_words:
        spec["health"] = {"exec": ["true"] * health_words}
    code, msg = submit(stub, spec)
    assert code in ACCEPTABLE, (code, msg)
    over = ports > MAX_PORTS or words > MAX_ARGS or health_words > MAX_ARGS
    assert (code == grpc.StatusCode.INVALID_ARGUMENT) == over, (code, msg)
    if over:
        assert "\n" not in msg and len(msg) < 200, msg


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = list(JOB_KEYS)  # every key the schema knows, so the fuzz follows new ones


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=8))
def test_any_struct_gets_an_answer_a_client_can_act_on(stub: Any, spec: dict[str, Any]) -> None:
    code, msg = submit(stub, spec)
    assert code in ACCEPTABLE, (code, msg, spec)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert msg and "\n" not in msg and "Traceback" not in msg


def test_the_master_still_serves_after_the_fuzz(stub: Any) -> None:
    code, msg = submit(stub, {"name": "after", "command": "true"})
    assert code == grpc.StatusCode.OK, msg
    assert stub.GetJob(pb.GetJobRequest(name="after"), timeout=10).name == "after"
