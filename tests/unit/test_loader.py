"""Config files: every example loads, Jsonnet variables work, and errors point at the right
file, line and column."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cfg.errors import ConfigError
from cfg.loader import jsonnet_error, load_file, load_objects

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(tmp_path: Path, name: str, text: str) -> str:
    f = tmp_path / name
    f.write_text(text)
    return str(f)


def errors(path: str, **kw: object) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        load_file(path, **kw)  # type: ignore[arg-type]
    return exc.value


# -- examples -------------------------------------------------------------------------------


def test_hello_example() -> None:
    [spec] = load_file(str(EXAMPLES / "hello.jsonnet"), default_user="alice")
    assert spec.name == "hello"
    assert spec.user == "alice"
    assert spec.run_as == "nobody"
    assert spec.kind == "service"
    assert spec.replicas == 2
    assert spec.requirements.cpu == 0.1
    assert spec.requirements.ram == 32 << 20
    assert spec.command[:2] == ["/bin/sh", "-c"]
    assert "hello from $BORG_JOB/$BORG_TASK_INDEX" in spec.command[2]
    assert spec.restart.policy == "always"


def test_web_example() -> None:
    [spec] = load_file(str(EXAMPLES / "web.yaml"))
    assert spec.requirements.ports == ["http"]
    assert spec.health is not None
    assert (spec.health.kind, spec.health.port) == ("http", "http")
    assert spec.spread == "rack"
    assert "$BORG_PORT" in spec.command[2]


def test_batch_example() -> None:
    [spec] = load_file(str(EXAMPLES / "batch.jsonnet"))
    assert spec.kind == "batch"
    assert spec.replicas == 3
    assert spec.priority == 100
    assert spec.restart.policy == "on-failure"
    assert spec.restart.max_restarts == 3


def test_gpu_example() -> None:
    [spec] = load_file(str(EXAMPLES / "gpu.jsonnet"))
    assert spec.kind == "batch"
    assert spec.requirements.gpu == 1


def test_gpu_isolation_example_is_a_gang_of_one_gpu_tasks() -> None:
    [spec] = load_file(str(EXAMPLES / "gpu-isolation.jsonnet"))
    assert (spec.gang, spec.replicas, spec.requirements.gpu) == (True, 2, 1)
    assert spec.command[:2] == ["python3", "-c"] and "cuDeviceGetCount" in spec.command[2]


@pytest.mark.parametrize("path", sorted(EXAMPLES.iterdir()), ids=lambda p: p.name)
def test_every_example_loads(path: Path) -> None:
    specs = load_file(str(path))
    assert specs
    assert all(s.name for s in specs)


# -- Jsonnet --------------------------------------------------------------------------------


def test_library_is_on_the_path_from_any_directory(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "j.jsonnet",
        "local borg = import 'borg.libsonnet';\n"
        "borg.service { name: 'a', command: 'x', requirements+: { ports: ['http'] },"
        " health: borg.httpHealth() } + borg.replicated(4) + borg.env({ A: 'b' })",
    )
    [spec] = load_file(f)
    assert spec.replicas == 4
    assert spec.priority == 200
    assert spec.env == {"A": "b"}
    assert spec.requirements.ram == 64 << 20  # template default kept by requirements+:
    assert spec.health is not None
    assert (spec.health.port, spec.health.path) == ("http", "/healthz")


def test_relative_imports(tmp_path: Path) -> None:
    write(tmp_path, "common.libsonnet", "{ base: { command: 'x', replicas: 2 } }")
    f = write(tmp_path, "j.jsonnet", "local c = import 'common.libsonnet'; c.base { name: 'a' }")
    [spec] = load_file(f)
    assert spec.replicas == 2


def test_ext_str(tmp_path: Path) -> None:
    f = write(tmp_path, "j.jsonnet", "{ name: std.extVar('name'), command: 'x' }")
    [spec] = load_file(f, ext_str={"name": "from-ext"})
    assert spec.name == "from-ext"
    err = errors(f)
    assert str(err) == f"{f}:1:9: undefined external variable: name"


def test_tla_str(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "j.jsonnet",
        "function(env='dev', n='1') [{ name: 'api-' + env, command: 'x',"
        " replicas: std.parseInt(n) }]",
    )
    [spec] = load_file(f)
    assert (spec.name, spec.replicas) == ("api-dev", 1)
    [spec] = load_file(f, tla_str={"env": "prod", "n": "5"})
    assert (spec.name, spec.replicas) == ("api-prod", 5)


def test_jsonnet_list_error_names_job_index(tmp_path: Path) -> None:
    f = write(
        tmp_path, "j.jsonnet", "[{name: 'a', command: 'x'}, {name: 'b', command: 'x', gpu: 1}]"
    )
    assert str(errors(f)) == f"{f}: [1]: unknown key 'gpu' (valid keys: name, user, run_as, " + (
        "priority, band, kind, replicas, command, env, requirements, restart, health, "
        "constraints, "
        "tolerations, spread, distinct_machines, update, kill_timeout, gang, schedule, "
        "concurrency, history_limit, time_zone)"
    )


def test_jsonnet_error_in_imported_file_points_there(tmp_path: Path) -> None:
    lib = write(tmp_path, "lib.libsonnet", "{\n  x: error 'lib broke',\n}\n")
    f = write(tmp_path, "j.jsonnet", "(import 'lib.libsonnet') + { name: 'a', command: 'x' }")
    err = errors(f)
    assert (err.file, err.line, err.col) == (lib, 2, 6)
    assert err.message == "lib broke"


def test_jsonnet_multiline_error_is_one_line(tmp_path: Path) -> None:
    f = write(tmp_path, "j.jsonnet", "{ name: 'a', command: error { why: [1, 2] } }")
    err = errors(f)
    assert "\n" not in str(err)
    assert err.line == 1


def test_jsonnet_error_parser() -> None:
    e = jsonnet_error("STATIC ERROR: a.jsonnet:(3:5)-(4:2): bad thing\n", "d")
    assert (e.file, e.line, e.col, e.message) == ("a.jsonnet", 3, 5, "bad thing")
    e = jsonnet_error(
        "RUNTIME ERROR: oops\n\t<std>:10:3-9\tfunction <f>\n\tb.jsonnet:7:1-4\tthunk\n", "d"
    )
    assert (e.file, e.line, e.col, e.message) == ("b.jsonnet", 7, 1, "oops")
    e = jsonnet_error("RUNTIME ERROR: no frames\n\tTop-level function\t\n", "d.jsonnet")
    assert str(e) == "d.jsonnet: no frames"


def test_libsonnet_file_can_be_loaded_directly(tmp_path: Path) -> None:
    f = write(tmp_path, "j.libsonnet", "{ name: 'a', command: 'x' }")
    assert [s.name for s in load_file(f)] == ["a"]


# -- YAML and JSON line numbers ---------------------------------------------------------------


YAML_LIST = """\
# two jobs
- name: a
  command: x
- name: b
  command: y
  requirements:
    cpu: 1
    ram: 64Mi
    ports: [http]
  health:
    http: {port: web}
"""


def test_yaml_schema_error_line_in_list(tmp_path: Path) -> None:
    f = write(tmp_path, "j.yaml", YAML_LIST)
    err = errors(f)
    assert str(err) == f"{f}:11: [1].health.http.port: 'web' is not one of requirements.ports"


def test_yaml_missing_key_points_at_enclosing_object(tmp_path: Path) -> None:
    f = write(tmp_path, "j.yaml", "- name: a\n  command: x\n- name: b\n  replicas: 2\n")
    assert str(errors(f)) == f"{f}:3: [1]: missing required key 'command'"


def test_yaml_list_item_line(tmp_path: Path) -> None:
    f = write(tmp_path, "j.yaml", "name: a\ncommand:\n  - echo\n  - ''\n")
    assert str(errors(f)) == f"{f}:4: command[1]: must not be empty"


def test_yaml_syntax_error_line_and_col(tmp_path: Path) -> None:
    f = write(tmp_path, "j.yaml", "name: a\ncommand: x\nenv:\n  A: 'unterminated\n")
    err = errors(f)
    assert err.file == f
    assert err.line == 5
    assert err.col == 1
    assert "\n" not in str(err)


def test_yaml_tab_indent_error(tmp_path: Path) -> None:
    f = write(tmp_path, "j.yaml", "name: a\n\tcommand: x\n")
    err = errors(f)
    assert (err.line, err.col) == (2, 1)


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    text = (
        "- &base\n  name: a\n  command: x\n  requirements: {ram: 128Mi}\n- <<: *base\n  name: b\n"
    )
    f = write(tmp_path, "j.yaml", text)
    specs = load_file(f)
    assert [s.name for s in specs] == ["a", "b"]
    assert specs[1].requirements.ram == 128 << 20


def test_json_schema_error_line(tmp_path: Path) -> None:
    f = write(tmp_path, "j.json", '{\n  "name": "a",\n  "command": "x",\n  "priority": 1000\n}\n')
    assert str(errors(f)) == f"{f}:4: priority: must be between 0 and 399, got 1000"


def test_json_syntax_error(tmp_path: Path) -> None:
    f = write(tmp_path, "j.json", '{\n  "name": "a"\n  "command": "x"\n}')
    assert str(errors(f)) == f"{f}:3:3: Expecting ',' delimiter"


def test_json_duplicate_key(tmp_path: Path) -> None:
    f = write(tmp_path, "j.json", '{"name": "a",\n "command": "x",\n "name": "b"}')
    assert str(errors(f)) == f"{f}:3: duplicate key 'name'"


def test_json_nan_rejected(tmp_path: Path) -> None:
    f = write(tmp_path, "j.json", '{"name": "a", "command": "x", "replicas": NaN}')
    assert str(errors(f)) == f"{f}: NaN is not valid JSON"


# -- file-level problems ----------------------------------------------------------------------


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "j.yaml"
    f.write_bytes(b"name: a\ncommand: \xff\n")
    assert str(errors(str(f))) == f"{f}:2: file is not valid UTF-8 text"


def test_directory(tmp_path: Path) -> None:
    d = tmp_path / "d.yaml"
    d.mkdir()
    assert str(errors(str(d))) == f"{d}: is a directory, not a config file"


def test_default_user_applies_to_every_job(tmp_path: Path) -> None:
    f = write(tmp_path, "j.yaml", "- {name: a, command: x}\n- {name: b, command: x, user: bob}\n")
    assert [s.user for s in load_file(f, default_user="alice")] == ["alice", "bob"]


def test_empty_list_is_no_jobs(tmp_path: Path) -> None:
    assert load_file(write(tmp_path, "j.json", "[]")) == []


def test_load_objects(tmp_path: Path) -> None:
    f = write(tmp_path, "j.yaml", "name: a\ncommand: x\nbogus: 1\n")
    assert load_objects(f) == [{"name": "a", "command": "x", "bogus": 1}]
    g = write(tmp_path, "k.yaml", "[1]\n")
    with pytest.raises(ConfigError) as exc:
        load_objects(g)
    assert str(exc.value) == f"{g}: [0]: expected a job object, got 1"


# -- borg.libsonnet helpers -----------------------------------------------------------------


def test_templates_derive_priority_from_band(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "b.jsonnet",
        "local borg = import 'borg.libsonnet';\n"
        "[borg.service { name: 'a', command: 'x' },\n"
        " borg.service { name: 'b', command: 'x', band: 'monitoring' },\n"
        " borg.service { name: 'c', command: 'x', priority: 250 },\n"
        " borg.batch { name: 'd', command: 'x' } + borg.band('free')]",
    )
    assert [s.priority for s in load_file(f)] == [200, 300, 250, 0]


def test_band_alone_sets_the_bands_lowest_priority(tmp_path: Path) -> None:
    f = write(tmp_path, "b.yaml", "name: a\ncommand: x\nband: monitoring\n")
    [spec] = load_file(f)
    assert spec.priority == 300


def test_library_helpers(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "h.jsonnet",
        "local borg = import 'borg.libsonnet';\n"
        "borg.httpServer('web', './serve', path='/ok') + borg.replicated(3)\n"
        "+ borg.resources(cpu=0.5, ram=borg.Gi(2)) + borg.gpu(2) + borg.spreadAcross('rack')\n"
        "+ borg.constraint('rack', '!=', 'r1') + borg.constraint('ssd', 'exists')\n"
        "+ borg.env({A: '1'}) + borg.env({B: '2'})",
    )
    [s] = load_file(f)
    assert (s.name, s.kind, s.priority, s.replicas) == ("web", "service", 200, 3)
    assert s.requirements.ports == ["http"]
    assert s.health is not None and s.health.to_dict()["http"] == {"port": "http", "path": "/ok"}
    assert (s.requirements.cpu, s.requirements.ram, s.requirements.gpu) == (0.5, 2 << 30, 2)
    assert [(t.key, t.value) for t in s.tolerations] == [("gpu", None)]
    assert s.spread == "rack"
    assert [(c.attr, c.op, c.value) for c in s.constraints] == [
        ("rack", "!=", "r1"),
        ("ssd", "exists", None),
    ]
    assert s.env == {"A": "1", "B": "2"}


def test_api_example_takes_a_tla(tmp_path: Path) -> None:
    [spec] = load_file(str(EXAMPLES / "api.jsonnet"), tla_str={"env": "prod"})
    assert spec.name == "api-prod"
    assert spec.env == {"DEPLOY_ENV": "prod"}
    assert spec.health is not None and spec.health.initial_delay_ms == 2000


def test_every_config_block_in_docs_validates(tmp_path: Path) -> None:
    """docs/config.md promises that each jsonnet/yaml block is a complete, valid config."""
    doc = (EXAMPLES.parent / "docs" / "config.md").read_text()
    blocks = re.findall(r"```(jsonnet|yaml)\n(.*?)```", doc, re.S)
    assert len(blocks) >= 8
    for i, (lang, text) in enumerate(blocks):
        f = write(tmp_path, f"doc{i}.{lang}", text)
        assert load_file(f), f"block {i} of docs/config.md evaluates to no jobs"


def test_a_fifo_is_refused_not_read_forever(tmp_path: Path) -> None:
    f = tmp_path / "pipe.yaml"
    os.mkfifo(f)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_file(str(f))


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    d = tmp_path / "dir.yaml"
    d.mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_file(str(d))


def test_batch_jobs_refuse_restart_always_and_huge_arguments(tmp_path: Path) -> None:
    b = write(tmp_path, "b.yaml", "name: b\nkind: batch\ncommand: x\nrestart: {policy: always}\n")
    with pytest.raises(ConfigError, match=r"restart.policy: 'always' is for services"):
        load_file(b)
    c = write(tmp_path, "c.yaml", "name: c\ncommand: '" + "a" * (128 * 1024) + "'\n")
    with pytest.raises(ConfigError, match="longer than 128 KiB"):
        load_file(c)
