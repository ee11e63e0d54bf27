"""google.protobuf.Struct <-> plain data: job specs travel in the API as Structs.

Part of the contract (both the master and borgcfg convert specs; the Borglet reads them).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2


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
