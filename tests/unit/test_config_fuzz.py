"""Property tests: whatever a config contains, the config layer answers with a JobSpec or a
one-line ConfigError, never another exception (which `borgcfg` would show as a traceback and
the master as an internal error)."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from borgmaster.model import JobSpec
from cfg.errors import ConfigError
from cfg.loader import load_file
from cfg.schema import JOB_KEYS, spec_to_config, validate_job

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- valid configs ----------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
accounts = st.from_regex(r"[a-z_][a-z0-9_-]{0,10}", fullmatch=True)
ports = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
attrs = st.from_regex(r"[a-z][a-z0-9_.-]{0,8}", fullmatch=True)
words = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
nonempty_words = words.filter(lambda s: s.strip() != "")
sizes = st.one_of(
    st.integers(1, 1 << 40),
    st.builds(
        lambda n, u: f"{n}{u}", st.integers(1, 1023), st.sampled_from(["", "Ki", "Mi", "Gi"])
    ),
)
durations = st.one_of(
    st.integers(1, 3600),
    st.builds(lambda n, u: f"{n}{u}", st.integers(1, 99), st.sampled_from(["ms", "s", "m", "h"])),
)
commands = st.one_of(nonempty_words, st.lists(nonempty_words, min_size=1, max_size=4))
env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(
    lambda s: not s.startswith("BORG_")
)
scalars = st.one_of(words, st.integers(-(10**6), 10**6), st.booleans())


@st.composite
def valid_jobs(draw: st.DrawFn) -> dict[str, Any]:
    job: dict[str, Any] = {"name": draw(names), "command": draw(commands)}
    port_list = draw(st.lists(ports, unique=True, max_size=3))
    optional: dict[str, Any] = {
        "user": accounts,
        "run_as": accounts,
        "priority": st.integers(0, 399),
        "kind": st.sampled_from(["service", "batch"]),
        "replicas": st.integers(1, 100_000),
        "env": st.dictionaries(env_names, scalars, max_size=3),
        "requirements": st.fixed_dictionaries(
            {},
            optional={
                "cpu": st.floats(0.001, 4096),
                "ram": sizes,
                "disk": sizes,
                "gpu": st.integers(0, 8),
                "ports": st.just(port_list),
            },
        ),
        "restart": st.fixed_dictionaries(
            {},
            optional={
                "policy": st.sampled_from(["always", "on-failure", "never"]),
                "max_restarts": st.integers(0, 100),
                "backoff": durations,
            },
        ),
        "constraints": st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {"attr": attrs, "op": st.sampled_from(["==", "!="]), "value": words}
                ),
                st.fixed_dictionaries(
                    {
                        "attr": attrs,
                        "op": st.sampled_from(["in", "not-in"]),
                        "value": st.lists(words, min_size=1, max_size=3),
                    }
                ),
                st.fixed_dictionaries({"attr": attrs, "op": st.just("exists")}),
            ),
            max_size=3,
        ),
        "tolerations": st.lists(
            st.fixed_dictionaries({"key": attrs}, optional={"value": words}), max_size=2
        ),
        "spread": attrs,
        "update": st.fixed_dictionaries(
            {}, optional={"max_unavailable": st.integers(1, 10), "max_surge": st.integers(0, 10)}
        ),
        "kill_timeout": durations,
    }
    for key, strat in optional.items():
        if draw(st.booleans()):
            job[key] = draw(strat)
    if job.get("kind") == "batch" and job.get("restart", {}).get("policy") == "always":
        job["restart"]["policy"] = "on-failure"  # `always` is refused for batch jobs
    if draw(st.booleans()):
        checks: list[st.SearchStrategy[dict[str, Any]]] = [
            st.fixed_dictionaries({"exec": commands})
        ]
        if port_list:
            job.setdefault("requirements", {})["ports"] = port_list
            p = st.sampled_from(port_list)
            checks.append(st.fixed_dictionaries({"tcp": st.fixed_dictionaries({"port": p})}))
            checks.append(
                st.fixed_dictionaries(
                    {"http": st.fixed_dictionaries({"port": p}, optional={"path": st.just("/h")})}
                )
            )
        health = draw(st.one_of(*checks))
        health.update(
            draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "interval": durations,
                        "timeout": durations,
                        "failure_threshold": st.integers(1, 10),
                        "initial_delay": durations,
                    },
                )
            )
        )
        job["health"] = health
    return job


@FAST
@given(valid_jobs())
def test_valid_jobs_validate_and_round_trip(obj: dict[str, Any]) -> None:
    spec = validate_job(obj)
    cfg = spec_to_config(spec)
    assert validate_job(cfg) == spec
    # the same through JSON with every number a double, as protobuf Struct delivers it
    assert validate_job(json.loads(json.dumps(cfg), parse_int=float)) == spec


# -- anything at all ----------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=10),
        st.sampled_from(["64Mi", "-5Mi", "1s", "0s", "http", "==", "in", "exists", "/", ""]),
    ),
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(JOB_KEYS), st.text(max_size=6)), kids, max_size=4
        ),
    ),
    max_leaves=20,
)


def check_outcome(obj: object) -> None:
    try:
        spec = validate_job(obj)
    except ConfigError as e:
        assert e.message
        assert "\n" not in str(e)
    else:
        assert isinstance(spec, JobSpec)


@FAST
@given(json_values)
def test_random_values(obj: object) -> None:
    check_outcome(obj)


def _paths(obj: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_jobs(draw: st.DrawFn) -> object:
    obj: Any = copy.deepcopy(draw(valid_jobs()))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(obj) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = obj
        for elem in path[:-1]:
            parent = parent[elem]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return obj


@FAST
@given(mutated_jobs())
def test_mutated_jobs(obj: object) -> None:
    check_outcome(obj)


# -- random files -------------------------------------------------------------------------------

YAML_TOKENS = [
    "name: a\n",
    "command: x\n",
    "- ",
    "  ",
    "\t",
    ":",
    " ",
    "\n",
    "{",
    "}",
    "[",
    "]",
    ",",
    "'",
    '"',
    "&a ",
    "*a",
    "<<: ",
    "!!str ",
    "!!binary ",
    "!!python/name:os.system ",
    "---\n",
    "...",
    "#",
    "|\n",
    ">",
    "?",
    "%YAML 1.1\n",
    "replicas: ",
    "3",
    "-1",
    "1.5",
    "requirements: ",
    "ram: ",
    "64Mi",
    "null",
    "~",
    "true",
    "2020-01-01",
    "0x1F",
    ".inf",
    "\xff",
    "é",
    "health:",
]
JSON_TOKENS = [
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    '"name"',
    '"command"',
    '"a"',
    '"x"',
    "1",
    "-1",
    "1e999",
    "0.5",
    "true",
    "null",
    "NaN",
    " ",
    "\n",
    '"replicas"',
    '"\\ud800"',
    '"\\u0000"',
    "[]",
    "{}",
]
JSONNET_TOKENS = [
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ",",
    ":",
    "::",
    "+:",
    "name",
    "command",
    "'a'",
    "'x'",
    "1",
    "local",
    "x",
    "=",
    ";",
    "self",
    "super",
    "$",
    "error",
    "'boom'",
    "if",
    "then",
    "else",
    "true",
    "null",
    "function",
    "std.extVar('v')",
    "import 'borg.libsonnet'",
    "borg.service",
    " ",
    "\n",
    "+",
    "-",
    "*",
    "/",
    "%",
    "[1, 2]",
    "'\\u0000'",
    "std.length",
    ".",
    "//",
    "/*",
    "|||",
]


def token_text(tokens: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(st.sampled_from(tokens), max_size=30).map("".join),
        st.text(max_size=40),
    )


FILE_CASES = st.one_of(
    st.tuples(st.sampled_from([".yaml", ".yml"]), token_text(YAML_TOKENS)),
    st.tuples(st.just(".json"), token_text(JSON_TOKENS)),
    st.tuples(st.sampled_from([".jsonnet", ".libsonnet"]), token_text(JSONNET_TOKENS)),
)


@FAST
@given(FILE_CASES)
def test_random_files(case: tuple[str, str]) -> None:
    ext, text = case
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "job" + ext)
        with open(path, "wb") as f:
            f.write(text.encode("utf-8", "surrogatepass"))
        try:
            specs = load_file(path, ext_str={"v": "x"})
        except ConfigError as e:
            assert e.file is not None
            assert e.file == path or e.file.endswith(".libsonnet"), str(e)
            assert str(e).startswith(e.file)
            assert "\n" not in str(e)
        else:
            assert all(isinstance(s, JobSpec) for s in specs)
