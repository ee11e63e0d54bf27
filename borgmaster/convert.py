"""Conversions between the model's dataclasses and the protobuf messages of the API."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from borgmaster.model import (
    ACTIVE_STATES_FOR_COUNT,
    Event,
    Job,
    Machine,
    Resources,
    Task,
)
from proto.borg.v1 import borg_pb2 as pb


def struct_from(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    json_format.ParseDict(d, s)
    return s


def dict_from(s: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain data, the same result as `json_format.MessageToDict` (numbers as
    floats, null as None; Infinity and NaN refused with ValueError) at a fraction of the cost:
    every SubmitJob pays this, and the generic printer was ~20 us of it per request."""
    return {k: _value(v) for k, v in s.fields.items()}


def _value(v: struct_pb2.Value) -> Any:
    which = v.WhichOneof("kind")
    if which == "string_value":
        return v.string_value
    if which == "number_value":
        x = v.number_value
        if x - x != 0.0:  # inf - inf and nan - nan are nan; finite x - x is 0
            what = "NaN" if x != x else "Infinity"
            raise ValueError(
                f"Fail to serialize {what} for Value.number_value, "
                "which would parse as string_value"
            )
        return x
    if which == "bool_value":
        return v.bool_value
    if which == "struct_value":
        return {k: _value(e) for k, e in v.struct_value.fields.items()}
    if which == "list_value":
        return [_value(e) for e in v.list_value.values]
    return None  # null_value, or unset (MessageToDict reads that as null too)


def resources_pb(r: Resources) -> pb.Resources:
    return pb.Resources(cpu=r.cpu, ram=r.ram, disk=r.disk, gpu=r.gpu)


def resources_from(r: pb.Resources) -> Resources:
    return Resources(cpu=r.cpu, ram=r.ram, disk=r.disk, gpu=r.gpu)


def task_pb(t: Task, usage: Any = None) -> pb.Task:
    """`usage` is the Borglet's last ObservedTask for this incarnation (leader memory)."""
    msg = pb.Task(
        index=t.index,
        state=t.state,
        machine=t.machine,
        version=t.version,
        restarts=t.restarts,
        exit_code=-1 if t.exit_code is None else t.exit_code,
        reason=t.reason,
        incarnation=t.incarnation,
        updated_ms=t.updated_ms,
        ports=t.ports,
        health=t.health,
    )
    if usage is not None and usage.incarnation == t.incarnation:
        msg.cpu_seconds = usage.cpu_seconds
        msg.memory_bytes = usage.memory_bytes
        msg.memory_peak_bytes = usage.memory_peak_bytes
        msg.pid = usage.pid
        msg.oom_kills = usage.oom_kills
    return msg


def job_pb(
    job: Job,
    tasks: list[Task],
    spec_config: dict[str, Any] | None,
    usage: dict[tuple[str, int], Any] | None = None,
) -> pb.Job:
    u = usage or {}
    msg = pb.Job(
        name=job.name,
        user=job.spec.user,
        priority=job.spec.priority,
        kind=job.spec.kind,
        replicas=job.spec.replicas,
        state=job.state,
        version=job.version,
        tasks=[task_pb(t, u.get(t.key)) for t in tasks],
        created_ms=job.created_ms,
        running=sum(1 for t in tasks if t.state in ACTIVE_STATES_FOR_COUNT),
        rollout=job.rollout,
        previous_version=job.previous_version,
    )
    if spec_config is not None:
        msg.spec.CopyFrom(struct_from(spec_config))
    return msg


def machine_pb(
    m: Machine, used: Resources, ntasks: int, usage: Resources | None = None, last_seen_ms: int = 0
) -> pb.Machine:
    return pb.Machine(
        name=m.name,
        state=m.state,
        capacity=resources_pb(m.capacity),
        used=resources_pb(used),
        attrs=m.attrs,
        tasks=ntasks,
        address=m.address,
        http=m.http,
        taints=[pb.Taint(**t) for t in m.taints],
        usage=resources_pb(usage or Resources()),
        last_seen_ms=last_seen_ms,
    )


def event_pb(e: Event) -> pb.Event:
    return pb.Event(
        index=e.index,
        ts_ms=e.ts_ms,
        type=e.type,
        job=e.job,
        task_index=e.task_index,
        machine=e.machine,
        message=e.message,
    )
