"""Job schema: a golden table of bad configs with their exact one-line errors, good configs,
Struct-style numbers, and the `spec_to_config` round trip.

The error strings are user-facing contract (`borgcfg validate` prints them), so they are pinned
verbatim here; change them deliberately.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from borgmaster.model import Constraint, JobSpec, Requirements, RestartPolicy, Toleration
from cfg.errors import ConfigError
from cfg.loader import load_file
from cfg.schema import spec_to_config, validate_job

BASE: dict[str, Any] = {"name": "x", "command": "true"}


def job(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


BAD_JOBS: list[tuple[object, str]] = [
    (job(replica=2), "unknown key 'replica', did you mean 'replicas'?"),
    (job(replicas="three"), "replicas: expected an integer, got 'three'"),
    (job(replicas=0), "replicas: must be between 1 and 100000, got 0"),
    (job(replicas=2.5), "replicas: expected an integer, got 2.5"),
    (job(replicas=True), "replicas: expected an integer, got true"),
    (job(priority=400), "priority: must be between 0 and 399, got 400"),
    (job(priority=-1), "priority: must be between 0 and 399, got -1"),
    (job(name="../x"), "name: '../x' is not a valid job name (must match ^[a-z][a-z0-9-]{0,62}$)"),
    (job(name="x\n"), "name: 'x\\n' is not a valid job name (must match ^[a-z][a-z0-9-]{0,62}$)"),
    (
        job(name="a" * 64),
        f"name: '{'a' * 64}' is not a valid job name (must match ^[a-z][a-z0-9-]{{0,62}}$)",
    ),
    ({"command": "true"}, "missing required key 'name'"),
    ({"name": "x"}, "missing required key 'command'"),
    (job(command=[]), "command: must not be empty"),
    (job(command=["a", ""]), "command[1]: must not be empty"),
    (job(command=["a", 5]), "command[1]: expected a string, got 5"),
    (job(command=["a\x00"]), "command[0]: must not contain NUL characters"),
    (job(command={"a": 1}), "command: expected a list of strings or a string, got an object"),
    (job(requirements={"ram": "-5Mi"}), "requirements.ram: '-5Mi' is not a size"),
    (job(requirements={"ram": 0}), "requirements.ram: must be greater than 0, got 0"),
    (job(requirements={"ram": "2048Ti"}), "requirements.ram: must be at most 1024Ti, got '2048Ti'"),
    (job(requirements={"disk": "lots"}), "requirements.disk: 'lots' is not a size"),
    (
        job(requirements={"cpu": 0}),
        "requirements.cpu: must be greater than 0 and at most 4096, got 0",
    ),
    (job(requirements={"cpu": "1"}), "requirements.cpu: expected a number of cores, got '1'"),
    (job(requirements={"gpu": -1}), "requirements.gpu: must be at least 0, got -1"),
    (job(requirements={"ports": ["http", "http"]}), "requirements.ports[1]: duplicate port 'http'"),
    (
        job(requirements={"ports": ["HTTP"]}),
        "requirements.ports[0]: 'HTTP' is not a valid port name "
        "(must match ^[a-z][a-z0-9_]{0,30}$)",
    ),
    (
        job(requirements={"hostPath": "/"}),
        "requirements: unknown key 'hostPath' (valid keys: cpu, ram, disk, gpu, ports)",
    ),
    (job(requirements={"rams": "1Gi"}), "requirements: unknown key 'rams', did you mean 'ram'?"),
    (job(restart={"backoff": "1d"}), "restart.backoff: '1d' is not a duration"),
    (job(restart={"backoff": "0s"}), "restart.backoff: must be greater than 0, got '0s'"),
    (
        job(restart={"policy": "sometimes"}),
        "restart.policy: expected one of 'always', 'on-failure', 'never', got 'sometimes'",
    ),
    (job(restart={"max_restarts": -1}), "restart.max_restarts: must be at least 0, got -1"),
    (
        job(health={"http": {"port": "web"}}),
        "health.http.port: 'web' is not one of requirements.ports",
    ),
    (
        job(requirements={"ports": ["http"]}, health={"tcp": {"port": "web"}}),
        "health.tcp.port: 'web' is not one of requirements.ports",
    ),
    (job(health={"http": {}}), "health.http: missing required key 'port'"),
    (
        job(requirements={"ports": ["http"]}, health={"http": {"port": "http", "path": "x"}}),
        "health.http.path: 'x' is not a URL path starting with '/'",
    ),
    (job(health={}), "health: needs exactly one of 'http', 'tcp', 'exec' (got none)"),
    (
        job(health={"exec": ["x"], "tcp": {"port": "a"}}),
        "health: needs exactly one of 'http', 'tcp', 'exec' (got tcp, exec)",
    ),
    (
        job(health={"exec": ["x"], "failure_threshold": 0}),
        "health.failure_threshold: must be at least 1, got 0",
    ),
    (
        job(health={"exec": ["x"], "interval": "0s"}),
        "health.interval: must be greater than 0, got '0s'",
    ),
    (
        job(health={"exec": ["x"], "intervall": "1s"}),
        "health: unknown key 'intervall', did you mean 'interval'?",
    ),
    (
        job(env={"BORG_JOB": "y"}),
        "env.BORG_JOB: names starting with BORG_ are reserved for the Borglet",
    ),
    (job(env={"my-var": "y"}), "env: 'my-var' is not a valid environment variable name"),
    (job(env={"A": {"b": 1}}), "env.A: expected a string, number or bool, got an object"),
    (job(env=["A=1"]), "env: expected an object of NAME: value, got a list"),
    (
        job(constraints=[{"attr": "rack", "op": "="}]),
        "constraints[0].op: expected one of '==', '!=', 'in', 'not-in', 'exists', got '='",
    ),
    (
        job(constraints=[{"attr": "rack", "op": "=="}]),
        "constraints[0]: missing required key 'value' (a string for '==')",
    ),
    (
        job(constraints=[{"attr": "rack", "op": "in", "value": []}]),
        "constraints[0].value: must not be empty",
    ),
    (
        job(constraints=[{"attr": "rack", "op": "in", "value": "r1"}]),
        "constraints[0].value: expected a list of strings for 'in', got 'r1'",
    ),
    (
        job(constraints=[{"attr": "rack", "op": "exists", "value": "x"}]),
        "constraints[0].value: must be absent for 'exists'",
    ),
    (job(constraints={"attr": "rack"}), "constraints: expected a list, got an object"),
    (job(tolerations=[{"value": "x"}]), "tolerations[0]: missing required key 'key'"),
    (
        job(update={"max_unavailable": 0}),
        "update.max_unavailable: must be at least 1 when max_surge is 0, got 0 (a rollout "
        "could never replace a task; set max_surge >= 1 to roll without losing capacity)",
    ),
    (job(update={"max_unavailable": -1}), "update.max_unavailable: must be at least 0, got -1"),
    (job(update={"max_surge": -1}), "update.max_surge: must be at least 0, got -1"),
    (job(kill_timeout="forever"), "kill_timeout: 'forever' is not a duration"),
    (
        job(user="Alice"),
        "user: 'Alice' is not a valid user name (must match ^[a-z_][a-z0-9_-]{0,31}$)",
    ),
    (
        job(run_as="../root"),
        "run_as: '../root' is not a valid unix account name (must match ^[a-z_][a-z0-9_-]{0,31}$)",
    ),
    (
        job(band="production", priority=50),
        "priority: 50 is outside band 'production' (200-299); set a priority in 200-299 or "
        "change band",
    ),
    (
        job(band="prod"),
        "band: expected one of 'free', 'batch', 'production', 'monitoring', got 'prod'",
    ),
    (job(kind="servce"), "kind: expected one of 'service', 'batch', got 'servce'"),
    (
        job(sandbox="/tmp"),
        "unknown key 'sandbox' (valid keys: name, user, run_as, priority, band, kind, replicas, "
        "command, env, requirements, restart, health, constraints, tolerations, spread, "
        "distinct_machines, update, kill_timeout, gang, schedule, concurrency, history_limit, "
        "time_zone)",
    ),
    (job(gang="yes"), "gang: expected true or false, got 'yes'"),
    ([BASE], "expected a job object, got a list"),
    ({"name": "x", "command": "true", 1: 2}, "keys must be strings, got 1"),
]


@pytest.mark.parametrize(("obj", "message"), BAD_JOBS, ids=[m for _, m in BAD_JOBS])
def test_bad_job(obj: object, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        validate_job(obj)
    assert str(exc.value) == message
    assert "\n" not in str(exc.value)


def test_error_names_file_and_line_from_path_lines() -> None:
    lines: dict[tuple[str | int, ...], int] = {("requirements", "ram"): 7}
    with pytest.raises(ConfigError) as exc:
        validate_job(job(requirements={"ram": "-5Mi"}), file="j.yaml", path_lines=lines.get)
    assert str(exc.value) == "j.yaml:7: requirements.ram: '-5Mi' is not a size"
    assert (exc.value.file, exc.value.line, exc.value.col) == ("j.yaml", 7, None)


def test_unknown_key_line_is_the_keys_line() -> None:
    asked: list[tuple[str | int, ...]] = []

    def lines(path: tuple[str | int, ...]) -> int:
        asked.append(path)
        return 3

    with pytest.raises(ConfigError) as exc:
        validate_job(job(update={"surge": 1}), file="j.yaml", path_lines=lines)
    assert asked == [("update", "surge")]
    assert str(exc.value) == "j.yaml:3: update: unknown key 'surge', did you mean 'max_surge'?"


# -- files: syntax errors and file-level rules ----------------------------------------------

BAD_FILES: list[tuple[str, str, str]] = [
    (
        "bad.jsonnet",
        '{\n  name: "x",\n  replicas: ,\n}\n',
        '{f}:3:13: unexpected: "," while parsing terminal',
    ),
    ("bad.jsonnet", '{name: "x", command: error "no command"}', "{f}:1:22: no command"),
    (
        "bad.yaml",
        "name: x\ncommand: [a\n",
        "{f}:3:1: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence)",
    ),
    ("bad.yaml", "name: x\n  command: y\n", "{f}:2:10: mapping values are not allowed here"),
    (
        "bad.json",
        '{"name": "x",\n "replicas": 2,}',
        "{f}:2:16: Expecting property name enclosed in double quotes",
    ),
    (
        "bad.yaml",
        "name: x\ncommand: y\nreplica: 2\n",
        "{f}:3: unknown key 'replica', did you mean 'replicas'?",
    ),
    (
        "bad.yaml",
        "name: x\ncommand: y\nreplicas: three\n",
        "{f}:3: replicas: expected an integer, got 'three'",
    ),
    (
        "bad.yaml",
        "name: x\ncommand: y\nrequirements:\n  ram: -5Mi\n",
        "{f}:4: requirements.ram: '-5Mi' is not a size",
    ),
    (
        "bad.yaml",
        "name: x\ncommand: y\nrestart: {backoff: soon}\n",
        "{f}:3: restart.backoff: 'soon' is not a duration",
    ),
    (
        "bad.yaml",
        "name: ../x\ncommand: y\n",
        "{f}:1: name: '../x' is not a valid job name (must match ^[a-z][a-z0-9-]{{0,62}}$)",
    ),
    (
        "bad.yaml",
        "name: x\ncommand: y\nreplicas: 0\n",
        "{f}:3: replicas: must be between 1 and 100000, got 0",
    ),
    (
        "bad.yaml",
        "name: x\ncommand: y\npriority: 400\n",
        "{f}:3: priority: must be between 0 and 399, got 400",
    ),
    (
        "bad.yaml",
        "name: x\ncommand: y\nrequirements:\n  ports: [http]\nhealth:\n  http:\n    port: web\n",
        "{f}:7: health.http.port: 'web' is not one of requirements.ports",
    ),
    (
        "bad.yaml",
        "- name: a\n  command: x\n- name: a\n  command: y\n",
        "{f}:3: [1].name: duplicate job name 'a' (also job [0])",
    ),
    (
        "bad.jsonnet",
        "[{name: 'a', command: 'x'}, {name: 'a', command: 'y'}]",
        "{f}: [1].name: duplicate job name 'a' (also job [0])",
    ),
    (
        "bad.jsonnet",
        "local borg = import 'borg.libsonnet';\n"
        "borg.service { name: 'a', command: 'x', replica: 2 }",
        "{f}: unknown key 'replica', did you mean 'replicas'?",
    ),
    (
        "bad.yaml",
        "name: x\ncommand: y\nband: batch\npriority: 250\n",
        "{f}:4: priority: 250 is outside band 'batch' (100-199); set a priority in 100-199 or "
        "change band",
    ),
    (
        "bad.jsonnet",
        "local borg = import 'borg.libsonnet';\n"
        "borg.service { name: 'a', command: 'x', priority: 50 }",
        "{f}: priority: 50 is outside band 'production' (200-299); set a priority in 200-299 or "
        "change band",
    ),
    ("bad.yaml", "name: x\ncommand: y\nram: 1\nram: 2\n", "{f}:4:1: duplicate key 'ram'"),
    ("bad.yaml", "42\n", "{f}:1: top level must be a job object or a list of jobs, got 42"),
    ("bad.yaml", "", "{f}: file is empty (want a job object or a list of jobs)"),
    ("bad.json", '"x"', "{f}:1: top level must be a job object or a list of jobs, got 'x'"),
    (
        "bad.toml",
        "name = 'x'",
        "{f}: unknown config format '.toml': want .jsonnet, .libsonnet, .yaml, .yml or .json",
    ),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_FILES, ids=[m for _, _, m in BAD_FILES])
def test_bad_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_file(str(f))
    assert str(exc.value) == message.format(f=f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_file(str(tmp_path / "nope.yaml"))
    assert str(exc.value) == f"{tmp_path / 'nope.yaml'}: no such file"


# -- good configs ---------------------------------------------------------------------------


def test_minimal_job_gets_defaults() -> None:
    spec = validate_job({"name": "hello", "command": "echo hi"}, default_user="alice")
    assert spec == JobSpec(
        name="hello",
        user="alice",
        command=["/bin/sh", "-c", "echo hi"],
        requirements=Requirements(cpu=0.1, ram=64 << 20),
        restart=RestartPolicy(policy="always"),
        kill_timeout_ms=10_000,
    )


def test_restart_policy_defaults_by_kind() -> None:
    svc = validate_job({"name": "s", "command": "x"})
    batch = validate_job({"name": "b", "kind": "batch", "command": "x"})
    assert svc.restart.policy == "always"
    assert batch.restart.policy == "on-failure"


def test_full_job() -> None:
    spec = validate_job(
        {
            "name": "web",
            "user": "bob",
            "run_as": "www-data",
            "priority": 250,
            "kind": "service",
            "replicas": 3,
            "command": ["python3", "-m", "http.server", "0"],
            "env": {"GREETING": "hi", "N": 3, "DEBUG": True, "R": 1.5},
            "requirements": {
                "cpu": 0.5,
                "ram": "1.5Gi",
                "disk": "100Mi",
                "gpu": 0,
                "ports": ["http", "admin"],
            },
            "restart": {"policy": "always", "max_restarts": 5, "backoff": "2s"},
            "health": {"http": {"port": "http", "path": "/healthz"}, "interval": "5s"},
            "constraints": [
                {"attr": "rack", "op": "!=", "value": "r1"},
                {"attr": "zone", "op": "in", "value": ["a", "b"]},
                {"attr": "ssd", "op": "exists"},
            ],
            "tolerations": [{"key": "gpu", "value": "true"}, {"key": "dedicated"}],
            "spread": "rack",
            "update": {"max_unavailable": 2, "max_surge": 1},
            "kill_timeout": "30s",
        },
        default_user="alice",
    )
    assert spec.user == "bob"
    assert spec.run_as == "www-data"
    assert spec.env == {"GREETING": "hi", "N": "3", "DEBUG": "true", "R": "1.5"}
    assert spec.requirements == Requirements(
        cpu=0.5, ram=3 << 29, disk=100 << 20, gpu=0, ports=["http", "admin"]
    )
    assert spec.restart == RestartPolicy(policy="always", max_restarts=5, backoff_ms=2000)
    assert spec.health is not None and spec.health.to_dict() == {
        "http": {"port": "http", "path": "/healthz"},
        "interval_ms": 5000,
        "timeout_ms": 1000,
        "failure_threshold": 3,
        "initial_delay_ms": 0,
    }
    assert spec.constraints == [
        Constraint("rack", "!=", "r1"),
        Constraint("zone", "in", ["a", "b"]),
        Constraint("ssd", "exists", None),
    ]
    assert spec.tolerations == [Toleration("gpu", "true"), Toleration("dedicated", None)]
    assert spec.spread == "rack"
    assert (spec.update.max_unavailable, spec.update.max_surge) == (2, 1)
    assert spec.kill_timeout_ms == 30_000


def test_max_unavailable_0_is_valid_with_a_surge() -> None:
    spec = validate_job(job(update={"max_unavailable": 0, "max_surge": 1}))
    assert (spec.update.max_unavailable, spec.update.max_surge) == (0, 1)


def test_health_variants() -> None:
    tcp = validate_job(
        job(requirements={"ports": ["db"]}, health={"tcp": {"port": "db"}, "timeout": "2s"})
    )
    assert tcp.health is not None
    assert tcp.health.to_dict()["tcp"] == {"port": "db"}
    assert tcp.health.timeout_ms == 2000
    ex = validate_job(job(health={"exec": ["true"], "initial_delay": "3s", "failure_threshold": 5}))
    assert ex.health is not None and ex.health.to_dict() == {
        "exec": ["true"],
        "interval_ms": 10_000,
        "timeout_ms": 1000,
        "failure_threshold": 5,
        "initial_delay_ms": 3000,
    }
    http = validate_job(job(requirements={"ports": ["http"]}, health={"http": {"port": "http"}}))
    assert http.health is not None
    assert http.health.to_dict()["http"] == {"port": "http", "path": "/"}


def test_null_means_default() -> None:
    spec = validate_job(job(env=None, health=None, spread=None, requirements={"ram": None}))
    assert spec.env == {}
    assert spec.health is None
    assert spec.requirements.ram == 64 << 20


def test_struct_style_floats_are_accepted() -> None:
    """protobuf Struct turns every number into a double; integral ones must pass as ints."""
    spec = validate_job(
        job(
            replicas=3.0,
            priority=200.0,
            requirements={"cpu": 2.0, "ram": 67108864.0, "gpu": 1.0},
            restart={"max_restarts": 4.0, "backoff": 1.5},
            update={"max_unavailable": 1.0, "max_surge": 0.0},
            env={"N": 3.0},
        )
    )
    assert (spec.replicas, spec.priority) == (3, 200)
    assert isinstance(spec.replicas, int)
    assert spec.requirements == Requirements(cpu=2.0, ram=64 << 20, gpu=1)
    assert isinstance(spec.requirements.gpu, int)
    assert spec.restart.max_restarts == 4
    assert spec.restart.backoff_ms == 1500
    assert spec.env == {"N": "3"}


def test_validate_does_not_mutate_input() -> None:
    obj = job(requirements={"ram": "1Gi"}, env={"A": 1})
    before = copy.deepcopy(obj)
    validate_job(obj)
    assert obj == before


# -- spec_to_config -------------------------------------------------------------------------


def test_spec_to_config_is_plain_json_with_unit_strings() -> None:
    spec = validate_job(job(requirements={"ram": "64Mi"}, restart={"backoff": 90}))
    cfg = spec_to_config(spec)
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["requirements"]["ram"] == "64Mi"
    assert cfg["restart"]["backoff"] == "1m30s"
    assert cfg["kill_timeout"] == "10s"
    assert "user" not in cfg


ROUND_TRIP = [
    job(),
    job(
        user="alice",
        run_as="nobody",
        env={"A": "1"},
        requirements={"ram": 1000, "disk": "1.5Gi", "ports": ["p"]},
    ),
    job(
        requirements={"ports": ["http"]},
        health={"http": {"port": "http", "path": "/x"}, "interval": "1m30s", "timeout": "1500ms"},
        constraints=[{"attr": "a", "op": "not-in", "value": ["x"]}, {"attr": "b", "op": "exists"}],
        tolerations=[{"key": "k"}, {"key": "g", "value": "v"}],
        spread="rack",
        kind="batch",
        kill_timeout=0,
    ),
    job(health={"exec": "curl -f localhost"}),
]


@pytest.mark.parametrize("obj", ROUND_TRIP)
def test_round_trip(obj: dict[str, Any]) -> None:
    spec = validate_job(obj)
    cfg = spec_to_config(spec)
    assert validate_job(cfg) == spec
    # and through a protobuf-Struct-like float conversion
    struct_like = json.loads(json.dumps(cfg), parse_int=float)
    assert validate_job(struct_like) == spec


def test_round_trip_examples() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    for f in sorted(root.iterdir()):
        for spec in load_file(str(f)):
            assert validate_job(spec_to_config(spec)) == spec


# -- ConfigError rendering ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"file": "a.yaml", "line": 3, "col": 5}, "a.yaml:3:5: boom"),
        ({"file": "a.yaml", "line": 3}, "a.yaml:3: boom"),
        ({"file": "a.yaml", "col": 5}, "a.yaml: boom"),
        ({"file": "a.yaml"}, "a.yaml: boom"),
        ({}, "boom"),
    ],
)
def test_config_error_str(kw: dict[str, Any], text: str) -> None:
    assert str(ConfigError("boom", **kw)) == text


def test_config_error_is_one_line_and_pickles() -> None:
    import pickle

    e = ConfigError("first\n  second\n", file="f", line=1, col=2)
    assert str(e) == "f:1:2: first second"
    again = pickle.loads(pickle.dumps(e))
    assert (again.file, again.line, again.col, again.message) == ("f", 1, 2, "first second")


def test_port_and_word_counts_are_capped_before_items_are_checked() -> None:
    from cfg.schema import MAX_ARGS, MAX_PORTS

    base = {"name": "j", "command": "true"}
    ok = validate_job(base | {"requirements": {"ports": [f"p{i}" for i in range(MAX_PORTS)]}})
    assert len(ok.requirements.ports) == MAX_PORTS
    # A million items of the wrong type: the count is what fails, not item 0.
    with pytest.raises(ConfigError, match=r"^requirements.ports: 1000000 ports, over the 64"):
        validate_job(base | {"requirements": {"ports": [0] * 1_000_000}})
    with pytest.raises(ConfigError, match=rf"^health.exec: 100000 words, over the {MAX_ARGS}"):
        validate_job(base | {"health": {"exec": ["true"] * 100_000}})
    with pytest.raises(ConfigError, match=rf"^command: {MAX_ARGS + 1} words"):
        validate_job(base | {"command": ["true"] * (MAX_ARGS + 1)})
    assert len(validate_job(base | {"command": ["true"] * MAX_ARGS}).command) == MAX_ARGS
