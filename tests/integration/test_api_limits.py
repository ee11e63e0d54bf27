"""The raw API against hostile input (not only borgcfg): whatever a client sends, a real
master answers with a status a client can act on (INVALID_ARGUMENT with a message, or the
request's result), never UNKNOWN or INTERNAL ("Exception calling application"), and it keeps
serving. Limits (SPEC part 2): a spec over 1 MiB encoded, a request over 4 MiB."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfg.schema import JOB_KEYS
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
