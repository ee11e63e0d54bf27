"""Reading config files: Jsonnet, YAML or JSON in, validated `JobSpec`s out.

The loader's job is to turn every way a file can be wrong into a one-line `ConfigError` that
points at the file (and line, where the format lets us know it): `borgcfg validate` prints
exactly that and exits 1. For YAML and JSON the schema errors carry the line of the offending
key, found by walking the composed YAML node tree alongside the data. Jsonnet output has no
source positions, so its schema errors name the file and the field path only.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

import _jsonnet

if TYPE_CHECKING:
    import yaml
from cfg.errors import ConfigError
from cfg.model import JobSpec
from cfg.schema import Path, PathLines, describe, validate_job

LIB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib")

JSONNET_EXTS = (".jsonnet", ".libsonnet")
YAML_EXTS = (".yaml", ".yml")
JSON_EXTS = (".json",)

# A Jsonnet source location: "x.jsonnet:3:5-9", "x.jsonnet:3:5" or "x.jsonnet:(3:5)-(4:2)".
_LOC = (
    r"(?P<file>[^\t]+?):"
    r"(?:\((?P<l1>\d+):(?P<c1>\d+)\)-\(\d+:\d+\)|(?P<l2>\d+):(?P<c2>\d+)(?:-\d+)?)"
)
_JSONNET_STATIC_RE = re.compile(rf"^STATIC ERROR: {_LOC}: (?P<msg>.*)$", re.S)
# A traceback frame: "\tx.jsonnet:3:5-9\tobject <anonymous>".
_JSONNET_FRAME_RE = re.compile(rf"^\t{_LOC}(?:\t.*)?$")


def load_file(
    path: str,
    *,
    ext_str: dict[str, str] | None = None,
    tla_str: dict[str, str] | None = None,
    default_user: str = "",
) -> list[JobSpec]:
    """Evaluate and validate every job in the config file at `path`.

    `ext_str`/`tla_str` are Jsonnet external variables and top-level arguments (ignored for
    YAML and JSON). Raises `ConfigError` (and nothing else) for any problem with the file.
    """
    data, path_lines = _evaluate(path, ext_str=ext_str, tla_str=tla_str)
    if isinstance(data, dict):
        return [validate_job(data, default_user=default_user, path_lines=path_lines, file=path)]
    specs: list[JobSpec] = []
    seen: dict[str, int] = {}
    for i, job in enumerate(data):
        spec = validate_job(
            job,
            default_user=default_user,
            path_lines=path_lines,
            file=path,
            path_prefix=(i,),
        )
        if spec.name in seen:
            line = path_lines((i, "name")) if path_lines else None
            raise ConfigError(
                f"[{i}].name: duplicate job name {spec.name!r} (also job [{seen[spec.name]}])",
                file=path,
                line=line,
            )
        seen[spec.name] = i
        specs.append(spec)
    return specs


def load_objects(
    path: str,
    *,
    ext_str: dict[str, str] | None = None,
    tla_str: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The file's job objects, evaluated but not validated (for tools that show raw config)."""
    data, _ = _evaluate(path, ext_str=ext_str, tla_str=tla_str)
    jobs = [data] if isinstance(data, dict) else data
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise ConfigError(f"[{i}]: expected a job object, got {describe(job)}", file=path)
    return jobs


def _evaluate(
    path: str,
    *,
    ext_str: dict[str, str] | None,
    tla_str: dict[str, str] | None,
) -> tuple[dict[str, Any] | list[Any], PathLines | None]:
    """Parse/evaluate `path` into its top-level value plus a path -> line map if known."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in JSONNET_EXTS + YAML_EXTS + JSON_EXTS:
        raise ConfigError(
            f"unknown config format {ext or '(no extension)'!r}: "
            "want .jsonnet, .libsonnet, .yaml, .yml or .json",
            file=path,
        )
    text = _read(path)
    path_lines: PathLines | None = None
    if ext in JSONNET_EXTS:
        data = _eval_jsonnet(path, text, ext_str or {}, tla_str or {})
    elif ext in YAML_EXTS:
        data, path_lines = _parse_yaml(path, text)
    else:
        data, path_lines = _parse_json(path, text)
    if not isinstance(data, dict | list):
        line = path_lines(()) if path_lines else None
        raise ConfigError(
            f"top level must be a job object or a list of jobs, got {describe(data)}",
            file=path,
            line=line,
        )
    return data, path_lines


def _read(path: str) -> str:
    try:
        if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
            # a FIFO or device would block or never end: only regular files are configs
            raise ConfigError("not a regular file", file=path)
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError("no such file", file=path)
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", file=path)
    except OSError as e:
        raise ConfigError(e.strerror or str(e), file=path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError("file is not valid UTF-8 text", file=path, line=line)


# -- Jsonnet ------------------------------------------------------------------------------


def _eval_jsonnet(path: str, text: str, ext_str: dict[str, str], tla_str: dict[str, str]) -> Any:
    jpath = [os.path.dirname(os.path.abspath(path)), LIB_DIR]
    try:
        out = _jsonnet.evaluate_snippet(
            path, text, jpathdir=jpath, ext_vars=ext_str, tla_vars=tla_str
        )
    except RuntimeError as e:
        raise jsonnet_error(str(e), path)
    except Exception as e:  # e.g. strings the binding cannot pass through
        raise ConfigError(f"jsonnet: {e}", file=path)
    try:
        return json.loads(out)
    except RecursionError:
        raise ConfigError("Jsonnet output nesting is too deep", file=path)
    except ValueError as e:  # not expected: Jsonnet emits JSON
        raise ConfigError(f"Jsonnet produced invalid JSON: {e}", file=path)


def jsonnet_error(text: str, default_file: str) -> ConfigError:
    """A `ConfigError` located at the first user frame of a `_jsonnet` RuntimeError text."""
    text = text.rstrip("\n")
    m = _JSONNET_STATIC_RE.match(text)
    if m:
        line, col = m.group("l1") or m.group("l2"), m.group("c1") or m.group("c2")
        return ConfigError(m.group("msg"), file=m.group("file"), line=int(line), col=int(col))
    lines = text.split("\n")
    head = lines[0]
    rest = lines[1:]
    # The message itself may span lines (e.g. `error {...}` manifests as multi-line JSON);
    # the traceback starts at the first tab-indented line.
    msg_lines = [head]
    frames = []
    for i, ln in enumerate(rest):
        if ln.startswith("\t"):
            frames = rest[i:]
            break
        msg_lines.append(ln)
    msg = " ".join(s.strip() for s in msg_lines)
    for prefix in ("RUNTIME ERROR: ", "STATIC ERROR: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    candidates = []
    for fr in frames:
        fm = _JSONNET_FRAME_RE.match(fr)
        if fm:
            candidates.append(fm)
    # Point at the first frame in a real file; a frame in the standard library ("<std>") would
    # name no file the user has, so then only the config file itself is named.
    user = [c for c in candidates if not c.group("file").startswith("<")]
    if user:
        fm = user[0]
        line, col = fm.group("l1") or fm.group("l2"), fm.group("c1") or fm.group("c2")
        return ConfigError(msg, file=fm.group("file"), line=int(line), col=int(col))
    return ConfigError(msg, file=default_file)


# -- YAML and JSON ------------------------------------------------------------------------


def _parse_yaml(path: str, text: str) -> tuple[Any, PathLines | None]:
    import yaml  # here, not at the top: `validate` of a Jsonnet file never pays for it

    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            raise ConfigError("file is empty (want a job object or a list of jobs)", file=path)
        _check_duplicate_keys(path, node)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = e.problem or e.context or "invalid YAML"
        if e.problem and e.context:
            msg = f"{e.problem} ({e.context})"
        if mark is None:
            raise ConfigError(f"YAML: {msg}", file=path)
        raise ConfigError(msg, file=path, line=mark.line + 1, col=mark.column + 1)
    except yaml.reader.ReaderError as e:
        # Unprintable characters: the reader knows only the character offset.
        line = text.count("\n", 0, e.position) + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        ch = f"U+{e.character:04X}" if isinstance(e.character, int) else repr(e.character)
        raise ConfigError(f"character {ch} is not allowed in YAML", file=path, line=line, col=col)
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML: {e}", file=path)
    except RecursionError:
        raise ConfigError("YAML nesting is too deep", file=path)
    finally:
        if loader is not None:
            loader.dispose()
    return data, _node_lines(node)


def _check_duplicate_keys(path: str, root: yaml.Node) -> None:
    """YAML (and JSON) silently keep the last of two equal keys; a config that says `ram` twice
    is almost certainly a mistake, so reject it."""
    import yaml

    stack = [root]
    seen_nodes: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:  # aliases make the tree a DAG
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag.endswith(":str") and k.value != "<<":
                    if k.value in keys:
                        raise ConfigError(
                            f"duplicate key {k.value!r}",
                            file=path,
                            line=k.start_mark.line + 1,
                            col=k.start_mark.column + 1,
                        )
                    keys.add(k.value)
                stack.extend((k, v))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _node_lines(root: yaml.Node) -> PathLines:
    """A path -> line lookup over a composed YAML tree.

    For a mapping entry it answers the line of the key (where a user looks for `ram:`); for a
    list item the item's line. A path that leaves the tree (a missing key) answers the line of
    the deepest node it reached, so "missing required key" points at the enclosing object.
    """
    import yaml

    def lookup(path: Path) -> int | None:
        node: yaml.Node = root
        line = root.start_mark.line + 1
        for elem in path:
            nxt: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode) and isinstance(elem, str):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == elem:
                        line = k.start_mark.line + 1
                        nxt = v
                        # later duplicates win in PyYAML, but duplicates are rejected anyway
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(elem, int)
                and 0 <= elem < len(node.value)
            ):
                nxt = node.value[elem]
                line = nxt.start_mark.line + 1
            if nxt is None:
                break
            node = nxt
        return line

    return lookup


def _parse_json(path: str, text: str) -> tuple[Any, PathLines | None]:
    import yaml

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k, v in items:
            if k in d:
                raise _DuplicateKey(k)
            d[k] = v
        return d

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ConfigError(e.msg, file=path, line=e.lineno, col=e.colno)
    except _DuplicateKey as e:
        raise ConfigError(f"duplicate key {e.key!r}", file=path, line=_json_key_line(text, e.key))
    except ValueError as e:  # NaN/Infinity
        raise ConfigError(str(e), file=path)
    except RecursionError:
        raise ConfigError("JSON nesting is too deep", file=path)
    # JSON is (nearly) YAML: compose it for line numbers; if PyYAML disagrees, go without.
    lines: PathLines | None = None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            lines = _node_lines(node)
    except (yaml.YAMLError, RecursionError):
        lines = None
    return data, lines


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_key_line(text: str, key: str) -> int | None:
    """Line of the second occurrence of `"key":` (best effort, for duplicate-key errors)."""
    needle = json.dumps(key)
    first = text.find(needle)
    second = text.find(needle, first + 1) if first >= 0 else -1
    return text.count("\n", 0, second) + 1 if second >= 0 else None
