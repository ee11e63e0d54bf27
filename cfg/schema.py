"""Job config schema: raw config objects in, normalised `JobSpec` out, and back again.

`validate_job` is the single gate every job passes, whether it came from a Jsonnet/YAML/JSON
file (`cfg.loader`) or from the API as a protobuf Struct (where every number is a float, so
integral floats are accepted for integer fields). Being strict here (unknown keys rejected at
every level, closed enums, bounded numbers) is what keeps a config from ever naming a host path,
cgroup or sandbox: there are no such keys to set.

`spec_to_config` is its inverse: `validate_job(spec_to_config(s)) == s` for every spec `s` that
`validate_job` can return. The CLI sends that form to the master and `diff` compares it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from cfg import periodic
from cfg.errors import ConfigError
from cfg.model import (
    BANDS,
    BATCH,
    CONCURRENCY,
    SERVICE,
    Constraint,
    HealthCheck,
    HealthKind,
    JobSpec,
    Periodic,
    Requirements,
    RestartPolicy,
    Toleration,
    UpdatePolicy,
)
from cfg.units import format_duration, format_size, parse_duration_ms, parse_size

PathElem = str | int
Path = tuple[PathElem, ...]
PathLines = Callable[[Path], int | None]

JOB_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")
ACCOUNT_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PORT_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,30}")
# Machine attribute / taint keys (`borglet --attr KEY=VALUE`): no '=', no whitespace.
ATTR_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,62}")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

KINDS = (str(SERVICE), str(BATCH))
RESTART_POLICIES = ("always", "on-failure", "never")
CONSTRAINT_OPS = ("==", "!=", "in", "not-in", "exists")
HEALTH_CHECKS = tuple(k.value for k in HealthKind)

MAX_PRIORITY = 399
MAX_REPLICAS = 100_000
CHILD_SUFFIX_CHARS = 11
"""A periodic job's children are named NAME-UNIXTIME: `-` and ten digits."""
MAX_HISTORY_LIMIT = 100
MAX_CPU = 4096.0
# Bounds that keep every value representable in msgpack (Raft log) and exactly in a double
# (protobuf Struct), so a config cannot crash the master with a 2**70-byte request.
MAX_SIZE = 1024 << 40  # 1024Ti
MAX_DURATION_MS = 7 * 24 * 3_600_000  # 168h
MAX_INT = 2**31 - 1

DEFAULT_RAM = 64 << 20
DEFAULT_KILL_TIMEOUT_MS = 10_000

JOB_KEYS = (
    "name",
    "user",
    "run_as",
    "priority",
    "band",
    "kind",
    "replicas",
    "command",
    "env",
    "requirements",
    "restart",
    "health",
    "constraints",
    "tolerations",
    "spread",
    "distinct_machines",
    "update",
    "kill_timeout",
    "gang",
    "schedule",
    "concurrency",
    "history_limit",
    "time_zone",
)
REQUIREMENTS_KEYS = ("cpu", "ram", "disk", "gpu", "ports")
RESTART_KEYS = ("policy", "max_restarts", "backoff")
MAX_ARG_BYTES = 128 * 1024
"""Linux's MAX_ARG_STRLEN: the longest single argument (with its NUL) exec accepts."""
MAX_ARGS = 4096
"""The most words a command (`command`, a health check's `exec`) may have: far more than any
real command line, and a bound on what every replica and each Borglet hold for it (counted
before any word is checked, so a huge list is refused at once)."""
MAX_PORTS = 64
"""The most named ports a task may ask for: each takes a port from its Borglet's range and a
DNS SRV record per task."""
HEALTH_KEYS = ("http", "tcp", "exec", "interval", "timeout", "failure_threshold", "initial_delay")
HTTP_KEYS = ("port", "path")
TCP_KEYS = ("port",)
CONSTRAINT_KEYS = ("attr", "op", "value")
TOLERATION_KEYS = ("key", "value")
UPDATE_KEYS = ("max_unavailable", "max_surge", "canary", "auto_revert")


def render_path(path: Path) -> str:
    """`("requirements", "ports", 1)` -> `requirements.ports[1]`; odd keys are JSON-quoted."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif _IDENT_RE.fullmatch(p):
            out += f".{p}" if out else p
        else:
            out += f"[{json.dumps(p)}]"
    return out


def describe(v: object) -> str:
    """A short, user-facing rendering of a config value for 'got ...' messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        r = repr(v)
        return r if len(r) <= 80 else r[:76] + "...'"
    if isinstance(v, int | float):
        r = repr(v)
        return r if len(r) <= 40 else r[:37] + "..."
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list | tuple):
        return "a list"
    return f"a {type(v).__name__}"


def _quote(s: str) -> str:
    return describe(s)


class _Validator:
    """Carries where errors go (file, line lookup, path prefix) through the recursive checks."""

    def __init__(self, file: str | None, path_lines: PathLines | None, prefix: Path) -> None:
        self.file = file
        self.path_lines = path_lines
        self.prefix = prefix

    # -- errors ---------------------------------------------------------------------------

    def fail(self, path: Path, message: str, *, at: Path | None = None) -> NoReturn:
        """Raise for `path`; `at` (default `path`) is what the line lookup is asked about."""
        full = self.prefix + path
        line = None
        if self.path_lines is not None:
            try:
                line = self.path_lines(self.prefix + (path if at is None else at))
            except Exception:  # a broken line map must not hide the real error
                line = None
        rendered = render_path(full)
        raise ConfigError(
            f"{rendered}: {message}" if rendered else message, file=self.file, line=line
        )

    # -- generic shapes -------------------------------------------------------------------

    def obj(
        self, v: object, path: Path, keys: Sequence[str], what: str = "an object"
    ) -> dict[str, Any]:
        """`v` as a dict with only `keys`; unknown keys fail with the closest valid key."""
        if not isinstance(v, dict):
            self.fail(path, f"expected {what}, got {describe(v)}")
        for k in v:
            if not isinstance(k, str):
                self.fail(path, f"keys must be strings, got {describe(k)}")
            if k not in keys:
                close = difflib.get_close_matches(k, keys, n=1, cutoff=0.6)
                if close:
                    hint = f", did you mean {close[0]!r}?"
                else:
                    hint = f" (valid keys: {', '.join(keys)})"
                self.fail(path, f"unknown key {_quote(k)}{hint}", at=(*path, k))
        return v

    def list_(self, v: object, path: Path, what: str = "a list") -> list[Any]:
        if not isinstance(v, list):
            self.fail(path, f"expected {what}, got {describe(v)}")
        return v

    def string(self, v: object, path: Path, *, nonempty: bool = False) -> str:
        if not isinstance(v, str):
            self.fail(path, f"expected a string, got {describe(v)}")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(path, "is not valid UTF-8 text")
        if "\x00" in v:
            self.fail(path, "must not contain NUL characters")
        if nonempty and not v.strip():
            self.fail(path, "must not be empty")
        return v

    def scalar_string(self, v: object, path: Path) -> str:
        """Strings, with numbers and bools spelled the JSON way (YAML `value: 1` is "1")."""
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            if not math.isfinite(v):
                self.fail(path, f"expected a string, got {describe(v)}")
            return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)
        if isinstance(v, str):
            return self.string(v, path)
        self.fail(path, f"expected a string, got {describe(v)}")

    def pattern(self, v: object, path: Path, regex: re.Pattern[str], what: str) -> str:
        s = self.string(v, path)
        if not regex.fullmatch(s):
            self.fail(path, f"{_quote(s)} is not a valid {what} (must match ^{regex.pattern}$)")
        return s

    def integer(self, v: object, path: Path, lo: int, hi: int) -> int:
        if isinstance(v, bool):
            self.fail(path, f"expected an integer, got {describe(v)}")
        if isinstance(v, float):
            # protobuf Struct carries every number as a double
            if not (math.isfinite(v) and v.is_integer()):
                self.fail(path, f"expected an integer, got {describe(v)}")
            v = int(v)
        if not isinstance(v, int):
            self.fail(path, f"expected an integer, got {describe(v)}")
        self.bounds(v, path, lo, hi)
        return v

    def bounds(self, v: int, path: Path, lo: int, hi: int) -> None:
        if hi == MAX_INT and v < lo:
            self.fail(path, f"must be at least {lo}, got {v}")
        if not lo <= v <= hi:
            self.fail(path, f"must be between {lo} and {hi}, got {v}")

    def enum(self, v: object, path: Path, choices: Sequence[str]) -> str:
        s = self.string(v, path)
        if s not in choices:
            opts = ", ".join(repr(c) for c in choices)
            self.fail(path, f"expected one of {opts}, got {_quote(s)}")
        return s

    def size(self, v: object, path: Path, *, positive: bool) -> int:
        try:
            n = parse_size(v)
        except ValueError as e:
            self.fail(path, str(e))
        if positive and n <= 0:
            self.fail(path, f"must be greater than 0, got {describe(v)}")
        if n > MAX_SIZE:
            self.fail(path, f"must be at most {format_size(MAX_SIZE)}, got {describe(v)}")
        return n

    def duration(self, v: object, path: Path, *, positive: bool) -> int:
        try:
            ms = parse_duration_ms(v)
        except ValueError as e:
            self.fail(path, str(e))
        if positive and ms <= 0:
            self.fail(path, f"must be greater than 0, got {describe(v)}")
        if ms > MAX_DURATION_MS:
            self.fail(
                path, f"must be at most {format_duration(MAX_DURATION_MS)}, got {describe(v)}"
            )
        return ms

    def argv(self, v: object, path: Path) -> list[str]:
        """A command: a non-empty argv list, or a string run by `/bin/sh -c`."""
        if isinstance(v, str):
            argv = ["/bin/sh", "-c", self.string(v, path, nonempty=True)]
            self.arg_size(argv[2], path)
            return argv
        items = self.list_(v, path, "a list of strings or a string")
        if not items:
            self.fail(path, "must not be empty")
        if len(items) > MAX_ARGS:
            self.fail(path, f"{len(items)} words, over the {MAX_ARGS} a command may have")
        out = [self.string(a, (*path, i), nonempty=True) for i, a in enumerate(items)]
        for i, a in enumerate(out):
            self.arg_size(a, (*path, i))
        return out

    def arg_size(self, a: str, path: Path) -> None:
        """Linux refuses exec with one argument over MAX_ARG_STRLEN (128 KiB): say so now
        rather than as `exec: argument list too long` on the machine."""
        if len(a.encode()) >= MAX_ARG_BYTES:
            self.fail(path, f"longer than {MAX_ARG_BYTES // 1024} KiB, the most exec accepts")

    # -- sections -------------------------------------------------------------------------

    def job(self, v: object, default_user: str) -> JobSpec:
        d = self.obj(v, (), JOB_KEYS, "a job object")
        g = {k: val for k, val in d.items() if val is not None}  # null means "use the default"
        if "name" not in g:
            self.fail((), "missing required key 'name'")
        name = self.pattern(g["name"], ("name",), JOB_NAME_RE, "job name")

        user = default_user
        if g.get("user", "") != "":
            user = self.pattern(g["user"], ("user",), ACCOUNT_RE, "user name")
        run_as = ""
        if g.get("run_as", "") != "":
            run_as = self.pattern(g["run_as"], ("run_as",), ACCOUNT_RE, "unix account name")

        priority = self.priority(g)
        kind = self.enum(g.get("kind", SERVICE), ("kind",), KINDS)
        replicas = self.integer(g.get("replicas", 1), ("replicas",), 1, MAX_REPLICAS)
        if "command" not in g:
            self.fail((), "missing required key 'command'", at=())
        command = self.argv(g["command"], ("command",))
        env = self.env(g.get("env", {}))
        req = self.requirements(g.get("requirements", {}))
        restart = self.restart(g.get("restart", {}), kind)
        health = self.health(g["health"], req.ports) if "health" in g else None
        constraints = [
            self.constraint(c, ("constraints", i))
            for i, c in enumerate(self.list_(g.get("constraints", []), ("constraints",)))
        ]
        tolerations = [
            self.toleration(t, ("tolerations", i))
            for i, t in enumerate(self.list_(g.get("tolerations", []), ("tolerations",)))
        ]
        spread = None
        if "spread" in g:
            spread = self.pattern(g["spread"], ("spread",), ATTR_RE, "attribute name")
        distinct = g.get("distinct_machines", False)
        if not isinstance(distinct, bool):
            self.fail(("distinct_machines",), f"expected true or false, got {describe(distinct)}")
        update = self.update(g.get("update", {}))
        gang = g.get("gang", False)
        if not isinstance(gang, bool):
            self.fail(("gang",), f"expected true or false, got {describe(gang)}")
        kill_timeout_ms = DEFAULT_KILL_TIMEOUT_MS
        if "kill_timeout" in g:
            kill_timeout_ms = self.duration(g["kill_timeout"], ("kill_timeout",), positive=False)
        periodic = self.periodic(g, name, kind)

        return JobSpec(
            name=name,
            user=user,
            run_as=run_as,
            priority=priority,
            kind=kind,
            replicas=replicas,
            command=command,
            env=env,
            requirements=req,
            restart=restart,
            health=health,
            constraints=constraints,
            tolerations=tolerations,
            spread=spread,
            distinct_machines=distinct,
            update=update,
            kill_timeout_ms=kill_timeout_ms,
            gang=gang,
            periodic=periodic,
        )

    def periodic(self, g: dict[str, Any], name: str, kind: str) -> Periodic | None:
        """`schedule` (batch jobs only) and its companions, which mean nothing without it."""
        if "schedule" not in g:
            for k in ("concurrency", "history_limit", "time_zone"):
                if k in g:
                    self.fail((k,), "only a periodic job (with `schedule`) has it")
            return None
        if kind != BATCH:
            self.fail(("schedule",), "only batch jobs can be periodic (set kind: batch)")
        if len(name) > 63 - CHILD_SUFFIX_CHARS:
            self.fail(
                ("name",),
                f"a periodic job's name is at most {63 - CHILD_SUFFIX_CHARS} characters "
                "(its children are NAME-UNIXTIME)",
            )
        time_zone = "UTC"
        if "time_zone" in g:
            time_zone = self.string(g["time_zone"], ("time_zone",), nonempty=True)
            try:
                periodic.zone(time_zone)
            except ValueError as e:
                self.fail(("time_zone",), str(e))
        text = self.string(g["schedule"], ("schedule",), nonempty=True)
        try:
            periodic.parse(text, time_zone)
        except ValueError as e:
            self.fail(("schedule",), str(e))
        out = Periodic(schedule=text.strip(), time_zone=time_zone)
        if "concurrency" in g:
            out.concurrency = self.enum(g["concurrency"], ("concurrency",), CONCURRENCY)
        if "history_limit" in g:
            out.history_limit = self.integer(
                g["history_limit"], ("history_limit",), 0, MAX_HISTORY_LIMIT
            )
        return out

    def priority(self, g: dict[str, Any]) -> int:
        """`priority`, checked against the optional `band` it claims to be in.

        `band` is not stored (the band is a function of the priority); it exists so that a
        template can declare intent (`borg.service` is production) and a priority edited
        into a different band is caught here instead of silently changing what the job may
        preempt and which quota it is charged to. With `band` alone, the priority is the
        band's lowest.
        """
        band = None
        if "band" in g:
            name = self.enum(g["band"], ("band",), [b[0] for b in BANDS])
            band = next(b for b in BANDS if b[0] == name)
        default = band[1] if band is not None else 100
        priority = self.integer(g.get("priority", default), ("priority",), 0, MAX_PRIORITY)
        if band is not None and not band[1] <= priority <= band[2]:
            name, lo, hi = band
            self.fail(
                ("priority",),
                f"{priority} is outside band {name!r} ({lo}-{hi}); "
                f"set a priority in {lo}-{hi} or change band",
            )
        return priority

    def env(self, v: object) -> dict[str, str]:
        path: Path = ("env",)
        if not isinstance(v, dict):
            self.fail(path, f"expected an object of NAME: value, got {describe(v)}")
        out: dict[str, str] = {}
        for k, val in v.items():
            if not isinstance(k, str):
                self.fail(path, f"keys must be strings, got {describe(k)}")
            if not ENV_NAME_RE.fullmatch(k):
                self.fail(
                    path, f"{_quote(k)} is not a valid environment variable name", at=(*path, k)
                )
            if k.startswith("BORG_"):
                self.fail((*path, k), "names starting with BORG_ are reserved for the Borglet")
            if isinstance(val, dict | list):
                self.fail((*path, k), f"expected a string, number or bool, got {describe(val)}")
            out[k] = self.scalar_string(val, (*path, k))
        return out

    def requirements(self, v: object) -> Requirements:
        path: Path = ("requirements",)
        d = {k: x for k, x in self.obj(v, path, REQUIREMENTS_KEYS).items() if x is not None}
        cpu = 0.1
        if "cpu" in d:
            c = d["cpu"]
            if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c):
                self.fail((*path, "cpu"), f"expected a number of cores, got {describe(c)}")
            if not 0 < c <= MAX_CPU:
                self.fail(
                    (*path, "cpu"), f"must be greater than 0 and at most {MAX_CPU:g}, got {c!r}"
                )
            cpu = float(c)
        ram = DEFAULT_RAM
        if "ram" in d:
            ram = self.size(d["ram"], (*path, "ram"), positive=True)
        disk = self.size(d["disk"], (*path, "disk"), positive=False) if "disk" in d else 0
        gpu = self.integer(d["gpu"], (*path, "gpu"), 0, MAX_INT) if "gpu" in d else 0
        ports: list[str] = []
        names = self.list_(d.get("ports", []), (*path, "ports"))
        if len(names) > MAX_PORTS:
            self.fail((*path, "ports"), f"{len(names)} ports, over the {MAX_PORTS} a task may have")
        for i, p in enumerate(names):
            name = self.pattern(p, (*path, "ports", i), PORT_NAME_RE, "port name")
            if name in ports:
                self.fail((*path, "ports", i), f"duplicate port {_quote(name)}")
            ports.append(name)
        return Requirements(cpu=cpu, ram=ram, disk=disk, gpu=gpu, ports=ports)

    def restart(self, v: object, kind: str) -> RestartPolicy:
        """Services keep running (default `always`, like Kubernetes and Nomad services);
        batch tasks are retried only when they fail."""
        path: Path = ("restart",)
        d = {k: x for k, x in self.obj(v, path, RESTART_KEYS).items() if x is not None}
        out = RestartPolicy(policy="always" if kind == SERVICE else "on-failure")
        if "policy" in d:
            out.policy = self.enum(d["policy"], (*path, "policy"), RESTART_POLICIES)
            if kind != SERVICE and out.policy == "always":
                self.fail(
                    (*path, "policy"),
                    "'always' is for services; a batch task that succeeded is done "
                    "(use on-failure or never)",
                )
        if "max_restarts" in d:
            out.max_restarts = self.integer(d["max_restarts"], (*path, "max_restarts"), 0, MAX_INT)
        if "backoff" in d:
            out.backoff_ms = self.duration(d["backoff"], (*path, "backoff"), positive=True)
        return out

    def health(self, v: object, ports: list[str]) -> HealthCheck:
        path: Path = ("health",)
        d = {k: x for k, x in self.obj(v, path, HEALTH_KEYS).items() if x is not None}
        checks = [k for k in HEALTH_CHECKS if k in d]
        if len(checks) != 1:
            got = f"got {', '.join(checks)}" if checks else "got none"
            self.fail(path, f"needs exactly one of 'http', 'tcp', 'exec' ({got})")
        out = HealthCheck(kind=HealthKind(checks[0]))
        cpath: Path = (*path, out.kind.value)
        if out.kind is HealthKind.EXEC:
            out.argv = self.argv(d["exec"], cpath)
        else:
            keys = HTTP_KEYS if out.kind is HealthKind.HTTP else TCP_KEYS
            c = self.obj(d[out.kind.value], cpath, keys)
            if c.get("port") is None:
                self.fail(cpath, "missing required key 'port'")
            out.port = self.string(c["port"], (*cpath, "port"))
            if out.port not in ports:
                self.fail((*cpath, "port"), f"{_quote(out.port)} is not one of requirements.ports")
            if out.kind is HealthKind.HTTP:
                hpath = "/" if c.get("path") is None else self.string(c["path"], (*cpath, "path"))
                if not hpath.startswith("/") or any(ch.isspace() or ord(ch) < 32 for ch in hpath):
                    self.fail(
                        (*cpath, "path"), f"{_quote(hpath)} is not a URL path starting with '/'"
                    )
                out.path = hpath
        if "interval" in d:
            out.interval_ms = self.duration(d["interval"], (*path, "interval"), positive=True)
        if "timeout" in d:
            out.timeout_ms = self.duration(d["timeout"], (*path, "timeout"), positive=True)
        if "failure_threshold" in d:
            fpath = (*path, "failure_threshold")
            out.failure_threshold = self.integer(d["failure_threshold"], fpath, 1, MAX_INT)
        if "initial_delay" in d:
            ipath = (*path, "initial_delay")
            out.initial_delay_ms = self.duration(d["initial_delay"], ipath, positive=False)
        return out

    def constraint(self, v: object, path: Path) -> Constraint:
        d = {k: x for k, x in self.obj(v, path, CONSTRAINT_KEYS).items() if x is not None}
        for key in ("attr", "op"):
            if key not in d:
                self.fail(path, f"missing required key {key!r}")
        attr = self.pattern(d["attr"], (*path, "attr"), ATTR_RE, "attribute name")
        op = self.enum(d["op"], (*path, "op"), CONSTRAINT_OPS)
        vpath: Path = (*path, "value")
        value: Any = None
        if op in ("==", "!="):
            if "value" not in d:
                self.fail(path, f"missing required key 'value' (a string for {op!r})")
            if isinstance(d["value"], dict | list):
                self.fail(vpath, f"expected a string for {op!r}, got {describe(d['value'])}")
            value = self.scalar_string(d["value"], vpath)
        elif op in ("in", "not-in"):
            if "value" not in d:
                self.fail(path, f"missing required key 'value' (a list of strings for {op!r})")
            items = self.list_(d["value"], vpath, f"a list of strings for {op!r}")
            if not items:
                self.fail(vpath, "must not be empty")
            value = []
            for i, x in enumerate(items):
                if isinstance(x, dict | list):
                    self.fail((*vpath, i), f"expected a string, got {describe(x)}")
                value.append(self.scalar_string(x, (*vpath, i)))
        elif "value" in d:
            self.fail(vpath, "must be absent for 'exists'")
        return Constraint(attr=attr, op=op, value=value)

    def toleration(self, v: object, path: Path) -> Toleration:
        d = {k: x for k, x in self.obj(v, path, TOLERATION_KEYS).items() if x is not None}
        if "key" not in d:
            self.fail(path, "missing required key 'key'")
        key = self.pattern(d["key"], (*path, "key"), ATTR_RE, "taint key")
        value = None
        if "value" in d:
            if isinstance(d["value"], dict | list):
                self.fail((*path, "value"), f"expected a string, got {describe(d['value'])}")
            value = self.scalar_string(d["value"], (*path, "value"))
        return Toleration(key=key, value=value)

    def update(self, v: object) -> UpdatePolicy:
        path: Path = ("update",)
        d = {k: x for k, x in self.obj(v, path, UPDATE_KEYS).items() if x is not None}
        out = UpdatePolicy(max_unavailable=1, max_surge=0)
        if "max_unavailable" in d:
            mpath = (*path, "max_unavailable")
            out.max_unavailable = self.integer(d["max_unavailable"], mpath, 0, MAX_INT)
        if "max_surge" in d:
            out.max_surge = self.integer(d["max_surge"], (*path, "max_surge"), 0, MAX_INT)
        if "canary" in d:
            out.canary = self.integer(d["canary"], (*path, "canary"), 0, MAX_INT)
        if "auto_revert" in d:
            revert = d["auto_revert"]
            if not isinstance(revert, bool):
                self.fail((*path, "auto_revert"), f"expected true or false, got {describe(revert)}")
            out.auto_revert = revert
        if out.max_unavailable == 0 and out.max_surge == 0:
            # Nothing could ever be replaced: no task may go down, and none may be added.
            self.fail(
                (*path, "max_unavailable"),
                "must be at least 1 when max_surge is 0, got 0 (a rollout could never "
                "replace a task; set max_surge >= 1 to roll without losing capacity)",
            )
        return out


def validate_job(
    obj: object,
    *,
    default_user: str = "",
    path_lines: PathLines | None = None,
    file: str | None = None,
    path_prefix: Path = (),
) -> JobSpec:
    """Check one job object and return its normalised `JobSpec`, or raise `ConfigError`.

    `path_lines` maps a field path (e.g. `("requirements", "ram")`) to the 1-based source line
    it came from, when the source format knows it. `path_prefix` locates this job inside its
    file (e.g. `(2,)` for the third job of a list); it is prepended to paths in messages and
    line lookups.
    """
    return _Validator(file, path_lines, path_prefix).job(obj, default_user)


def spec_to_config(spec: JobSpec) -> dict[str, Any]:
    """The config dict (JSON-able, sizes and durations as strings) that validates back to `spec`.

    Every field is written out explicitly, so the result does not depend on schema defaults;
    only `user`/`run_as` are left out when empty, since the empty string means "default".
    """
    out: dict[str, Any] = {"name": spec.name}
    if spec.user:
        out["user"] = spec.user
    if spec.run_as:
        out["run_as"] = spec.run_as
    out["priority"] = spec.priority
    out["kind"] = spec.kind
    out["replicas"] = spec.replicas
    out["command"] = list(spec.command)
    out["env"] = dict(spec.env)
    r = spec.requirements
    out["requirements"] = {
        "cpu": r.cpu,
        "ram": format_size(r.ram),
        "disk": format_size(r.disk),
        "gpu": r.gpu,
        "ports": list(r.ports),
    }
    out["restart"] = {
        "policy": spec.restart.policy,
        "max_restarts": spec.restart.max_restarts,
        "backoff": format_duration(spec.restart.backoff_ms),
    }
    if spec.health is not None:
        h = spec.health
        health: dict[str, Any] = {}
        if h.kind is HealthKind.EXEC:
            health["exec"] = list(h.argv)
        elif h.kind is HealthKind.HTTP:
            health["http"] = {"port": h.port, "path": h.path}
        else:
            health["tcp"] = {"port": h.port}
        health["interval"] = format_duration(h.interval_ms)
        health["timeout"] = format_duration(h.timeout_ms)
        health["failure_threshold"] = h.failure_threshold
        health["initial_delay"] = format_duration(h.initial_delay_ms)
        out["health"] = health
    constraints = []
    for c in spec.constraints:
        cd: dict[str, Any] = {"attr": c.attr, "op": c.op}
        if c.value is not None:
            cd["value"] = list(c.value) if isinstance(c.value, list) else c.value
        constraints.append(cd)
    out["constraints"] = constraints
    tolerations = []
    for t in spec.tolerations:
        td: dict[str, Any] = {"key": t.key}
        if t.value is not None:
            td["value"] = t.value
        tolerations.append(td)
    out["tolerations"] = tolerations
    if spec.spread is not None:
        out["spread"] = spec.spread
    if spec.distinct_machines:
        out["distinct_machines"] = True
    out["update"] = {
        "max_unavailable": spec.update.max_unavailable,
        "max_surge": spec.update.max_surge,
    }
    if spec.update.canary:
        out["update"]["canary"] = spec.update.canary
    if spec.update.auto_revert:
        out["update"]["auto_revert"] = True
    out["kill_timeout"] = format_duration(spec.kill_timeout_ms)
    if spec.gang:
        out["gang"] = True
    if spec.periodic is not None:
        out["schedule"] = spec.periodic.schedule
        out["concurrency"] = spec.periodic.concurrency
        out["history_limit"] = spec.periodic.history_limit
        out["time_zone"] = spec.periodic.time_zone
    return out
