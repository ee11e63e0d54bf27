"""`borgmaster run` (one replica of a cell) and `borgmaster dev` (a whole cell in one command)."""

from __future__ import annotations

import gc
import getpass
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import NoReturn

import click
import psutil

from borgmaster.digests import DIGEST_EVERY
from borgmaster.fsm import DataDirError, RaftTuning, lock_data_dir, own_raft_secret
from borgmaster.priority import weigh_session
from borgmaster.server import Master, MasterConfig
from cfg.errors import ConfigError
from cfg.logsetup import log_options, setup_logging
from cfg.options import host_port
from cfg.tls import CERT_FILE, Role, TlsDir, cert_identity, record_dev_cell
from cfg.units import parse_size

log = logging.getLogger("borgmaster")


def _logs(verbose: bool, log_level: str, log_format: str) -> None:
    setup_logging("debug" if verbose else log_level, log_format)


def raft_secret(secret_file: str | None, data_dir: str, has_peers: bool) -> str:
    """The secret that authenticates (and encrypts) this replica's Raft traffic.

    PySyncObj unpickles every unauthenticated frame, so there is no Raft without one: a
    replica with peers needs `--raft-secret-file` (exit 2 without it), a replica alone makes
    its own in its data dir."""
    if secret_file:
        with open(secret_file) as f:
            secret = f.read().strip()
        if len(secret) < 16:
            _usage_exit(f"{secret_file}: the Raft secret must be 16+ characters")
        if os.stat(secret_file).st_mode & 0o077:
            log.warning("%s is readable by other users: chmod 600 it", secret_file)
        return secret
    if has_peers:
        _usage_exit(
            "a replica with peers needs --raft-secret-file (the same 16+ character secret on "
            "every replica; e.g. `head -c 32 /dev/urandom | base64 > raft.secret`)"
        )
    return own_raft_secret(data_dir)


def _usage_exit(message: str) -> NoReturn:
    """One line on stderr and exit 2 (SPEC: usage errors)."""
    click.echo(f"borgmaster: {message}", err=True)
    sys.exit(2)


def _size_option(value: str, flag: str) -> int:
    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=flag) from None


def _check_addr(value: str, flag: str) -> str:
    try:
        return host_port(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=flag) from None


def _wait_for_signal(stop: threading.Event) -> None:
    def handler(signum: int, frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.wait(0.5):
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The Borgmaster: a replica of the cell's replicated state and its scheduler."""


@main.command()
@click.option("--id", "replica_id", required=True, help="This replica's id (unique in the cell).")
@click.option("--raft", required=True, help="HOST:PORT this replica's Raft listens on.")
@click.option("--peer", "peers", multiple=True, help="Raft HOST:PORT of another replica.")
@click.option("--grpc", "grpc_addr", required=True, help="HOST:PORT of the gRPC API.")
@click.option("--http", "http_addr", required=True, help="HOST:PORT for /metrics and the UI.")
@click.option(
    "--dns", "dns_addr", default="", help="HOST:PORT to serve the cell's names (BNS) as DNS."
)
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Raft state.")
@click.option("--raft-secret-file", type=click.Path(dir_okay=False, exists=True), default=None)
@click.option(
    "--tls-dir",
    envvar="BORG_TLS_DIR",
    type=click.Path(file_okay=False),
    default=None,
    help="ca.crt, tls.crt, tls.key of this replica (`ca issue --role master`): mTLS on gRPC, "
    "HTTPS, identities and roles. Without it the cell trusts every caller.",
)
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append one JSON line per write RPC (who, what, result) to this file.",
)
@click.option("--cell", default="borgcell", show_default=True, help="The cell's name.")
@click.option("--machine-timeout", default=30.0, show_default=True, help="Seconds until lost.")
@click.option("--fsync", is_flag=True, help="Sync the Raft journal to disk before acknowledging.")
@click.option(
    "--join",
    is_flag=True,
    help="Join a running cell (then `borgcfg cell add` this replica): do not campaign until "
    "a leader has contacted it; no effect once it has joined.",
)
@click.option(
    "--scheduler-policy",
    type=click.Choice(["hybrid", "best", "spread"]),
    default="hybrid",
    show_default=True,
    help="Scoring: hybrid (fewest stranded resources), best fit, or spread (E-PVM).",
)
@click.option(
    "--job-retention", default=3600.0, show_default=True, help="Seconds killed jobs are kept."
)
@click.option(
    "--digest-every",
    type=click.IntRange(min=0),
    default=DIGEST_EVERY,
    show_default=True,
    help="Hash the state every N log indexes and compare it with the other replicas' "
    "(the same N on every replica; 0: never).",
)
@click.option(
    "--raft-realtime",
    is_flag=True,
    help="Run the Raft thread real-time (SCHED_RR 1; needs CAP_SYS_NICE): for a master that "
    "shares a machine saturated by tasks (docs/operations.md).",
)
@click.option(
    "--min-free",
    default="64Mi",
    show_default=True,
    help="Refuse writes (UNAVAILABLE, 'disk full on replica ...') while the data dir's file "
    "system has less free space than this.",
)
@click.option("-v", "--verbose", is_flag=True, help="Same as --log-level debug.")
@log_options
def run(
    replica_id: str,
    raft: str,
    peers: tuple[str, ...],
    grpc_addr: str,
    http_addr: str,
    dns_addr: str,
    data_dir: str,
    raft_secret_file: str | None,
    tls_dir: str | None,
    audit_log: str | None,
    cell: str,
    machine_timeout: float,
    fsync: bool,
    join: bool,
    scheduler_policy: str,
    job_retention: float,
    digest_every: int,
    raft_realtime: bool,
    min_free: str,
    verbose: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run one Borgmaster replica."""
    _logs(verbose, log_level, log_format)
    for v, flag in ((raft, "--raft"), (grpc_addr, "--grpc"), (http_addr, "--http")):
        _check_addr(v, flag)
    if dns_addr:
        _check_addr(dns_addr, "--dns")
    for p in peers:
        _check_addr(p, "--peer")
    if len(peers) + 1 not in (1, 3, 5):
        # Allowed (a replica joining with `borgcfg cell add` lists every member), but an even
        # count tolerates no more failures than one replica fewer.
        log.warning("%d replicas: a cell normally has 1, 3 or 5", len(peers) + 1)
    tls = load_tls(tls_dir, "borgmaster")
    os.umask(0o077)  # the journal, snapshots and secrets are the master's alone
    try:
        lock_data_dir(data_dir)  # before anything reads or writes the dir (the secret too)
        secret = raft_secret(raft_secret_file, data_dir, bool(peers) or join)
    except (OSError, DataDirError) as e:
        click.echo(f"borgmaster: {e}", err=True)
        sys.exit(1)
    cfg = MasterConfig(
        id=replica_id,
        raft=raft,
        grpc=grpc_addr,
        http=http_addr,
        dns=dns_addr,
        data_dir=data_dir,
        peers=list(peers),
        raft_secret=secret,
        cell=cell,
        machine_timeout_s=machine_timeout,
        fsync=fsync,
        scheduler_policy=scheduler_policy,
        job_retention_s=job_retention,
        join=join,
        tls=tls,
        audit_log=audit_log or "",
        digest_every=digest_every,
        min_free_bytes=_size_option(min_free, "--min-free"),
        tuning=RaftTuning(raft_realtime=1 if raft_realtime else 0),
    )
    serve(cfg)


def load_tls(tls_dir: str | None, prog: str) -> TlsDir | None:
    """The TLS dir named by --tls-dir/$BORG_TLS_DIR, checked now: a missing file, or a
    certificate that is not a master's, is one line and exit 2."""
    if not tls_dir:
        return None
    try:
        tls = TlsDir.load(tls_dir)
    except ConfigError as e:
        _usage_exit(str(e))
    ident = cert_identity(tls.cert_file)
    if ident is None or ident.role is not Role.MASTER:
        what = f"a {ident.role.value}'s" if ident else "not a borgcell"
        _usage_exit(f"--tls-dir {tls_dir}: {CERT_FILE} is {what} certificate, not a master's")
    return tls


def tune_gc() -> None:
    """Make the cyclic GC cheaper for a long-lived process with a large, mostly acyclic heap.

    Every write allocates a few dozen containers (decoded command, spec, job, task, event) on
    every replica, so at the default gen-0 threshold (700) a collection ran every ~15 writes
    and older generations were rescanned often: about a third of the apply path's CPU. The
    state itself is freed by reference counting, so collecting cycles less often only delays
    the rare cyclic garbage. `gc.freeze` moves what start-up built (modules, gRPC, Raft)
    out of every later scan."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def serve(cfg: MasterConfig) -> None:
    try:
        master = Master(cfg)
        master.start()
    except (OSError, DataDirError, ImportError) as e:
        click.echo(f"borgmaster: {e}", err=True)
        sys.exit(1)
    tune_gc()
    weighed = weigh_session(cfg.tuning.session_nice)
    if weighed:
        log.info("%s", weighed)
    if cfg.tls is None:  # said once it runs (a start that fails says only why)
        log.warning("no --tls-dir: plaintext, and every caller may do everything")
    stop = threading.Event()
    _wait_for_signal(stop)
    master.stop()


def dev_certs(tls_root: str, machines: list[str]) -> dict[str, str]:
    """The dev cell's CA and certificates (made on first start, reused after); the admin
    certificate is named after the login user, so borgcfg acts as them."""
    from borgmaster.ca import ensure_dev_certs

    user = re.sub(r"[^a-z0-9._-]", "-", _login().lower()).strip("-._") or "dev"
    return ensure_dev_certs(tls_root, "borgcell", user[:63], machines)


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "") or "dev"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@main.command()
@click.option("--data-dir", default=".borgcell/dev", show_default=True, type=click.Path())
@click.option("--machines", default=1, show_default=True, help="Borglets to start.")
@click.option("--grpc", "grpc_addr", default="127.0.0.1:7070", show_default=True)
@click.option("--http", "http_addr", default="127.0.0.1:7080", show_default=True)
@click.option("--dns", "dns_addr", default="127.0.0.1:7053", show_default=True)
@click.option(
    "--no-tls",
    is_flag=True,
    help="Plaintext and no identities (the first release's dev cell).",
)
@click.option("-v", "--verbose", is_flag=True, help="Same as --log-level debug.")
@log_options
def dev(
    data_dir: str,
    machines: int,
    grpc_addr: str,
    http_addr: str,
    dns_addr: str,
    no_tls: bool,
    verbose: bool,
    log_level: str,
    log_format: str,
) -> None:
    """A dev cell: one master and Borglet(s) sized from this machine, all in the foreground.

    Ctrl-C stops everything and kills every task it started.
    """
    _logs(verbose, log_level, log_format)
    _check_addr(grpc_addr, "--grpc")
    _check_addr(http_addr, "--http")
    _check_addr(dns_addr, "--dns")
    if machines < 1:
        raise click.UsageError("--machines must be at least 1")
    data_dir = os.path.abspath(data_dir)
    # The Borglets' data dirs must stay reachable by task accounts: create the tree first,
    # then keep everything the master writes private.
    os.makedirs(os.path.join(data_dir, "borglet"), exist_ok=True)
    os.umask(0o077)
    host = socket.gethostname().split(".")[0].lower() or "localhost"
    names = [host if machines == 1 else f"{host}-{i}" for i in range(machines)]
    try:
        lock_data_dir(os.path.join(data_dir, "master"))
        secret = own_raft_secret(os.path.join(data_dir, "master"))
        certs = {} if no_tls else dev_certs(os.path.join(data_dir, "tls"), names)
        tls = TlsDir.load(certs["master"]) if certs else None
    except (OSError, DataDirError, ConfigError, ValueError) as e:
        click.echo(f"borgmaster dev: {e}", err=True)
        sys.exit(1)
    # Neighbouring ports: Raft at gRPC-10, the first Borglet at gRPC+1 / HTTP+1.
    ghost, gport = grpc_addr.rsplit(":", 1)
    hhost, hport = http_addr.rsplit(":", 1)
    raft = f"{ghost}:{int(gport) - 10}"
    cfg = MasterConfig(
        id="dev",
        raft=raft,
        grpc=grpc_addr,
        http=http_addr,
        dns=dns_addr,
        data_dir=os.path.join(data_dir, "master"),
        raft_secret=secret,
        machine_timeout_s=10.0,
        tls=tls,
        audit_log=os.path.join(data_dir, "master", "audit.log"),
    )
    try:
        master = Master(cfg)
        master.start()
    except (OSError, DataDirError) as e:
        click.echo(f"borgmaster dev: {e}", err=True)
        sys.exit(1)
    if certs:
        try:
            record_dev_cell(grpc_addr, certs["admin"])
        except OSError as e:
            log.warning(
                "cannot record the dev cell for borgcfg (%s): pass --tls-dir %s", e, certs["admin"]
            )
    cpu = float(psutil.cpu_count() or 1) / machines
    mem = int(psutil.virtual_memory().total) // machines  # the machine, split (like cpu)
    children: list[subprocess.Popen[bytes]] = []
    for i, name in enumerate(names):
        tls_args = ["--tls-dir", certs[f"borglet:{name}"]] if certs else []
        argv = [
            sys.executable,
            "-m",
            "borglet.cli",
            "run",
            "--name",
            name,
            "--master",
            grpc_addr,
            "--grpc",
            f"{ghost}:{int(gport) + 1}" if i == 0 else f"127.0.0.1:{_free_port()}",
            "--http",
            f"{hhost}:{int(hport) + 1}" if i == 0 else f"127.0.0.1:{_free_port()}",
            "--data-dir",
            os.path.join(data_dir, "borglet", name),
            "--cpu",
            f"{cpu:g}",
            "--memory",
            str(mem),
            "--kill-tasks-on-exit",
            # The host's GPUs (NVML) go to the first Borglet only: Borglets sharing a host
            # must not offer the same devices.
            "--gpus",
            "auto" if i == 0 else "none",
            "--log-level",
            "debug" if verbose else log_level,
            "--log-format",
            log_format,
            *tls_args,
        ]
        children.append(subprocess.Popen(argv))
    scheme = "https" if certs else "http"
    ui_hint = (
        "  .venv/bin/borgcfg ui                # a login link for the web UI\n" if certs else ""
    )
    click.echo(
        f"\nborgcell dev cell is up: master {grpc_addr}, UI {scheme}://{http_addr}/, "
        f"DNS {dns_addr}, {machines} Borglet(s).\n"
        "In another terminal:\n"
        "  .venv/bin/borgcfg up examples/hello.jsonnet --wait\n"
        "  .venv/bin/borgcfg status hello\n"
        f"{ui_hint}"
        "Ctrl-C stops the cell and every task it started.\n",
        err=True,
    )
    stop = threading.Event()
    _wait_for_signal(stop)
    # The master goes first, so it records nothing about the tasks the Borglets then kill
    # (--kill-tasks-on-exit): the next `dev` on this data dir still wants them and the
    # Borglets start them again, as after a reboot. (The Borglets also stop syncing before
    # they kill, and forget those tasks.)
    master.stop()
    for c in children:
        c.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for c in children:
        try:
            c.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()


@main.command()
@click.option(
    "--snapshot",
    "snapshot_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="A file `borgcfg snapshot save` wrote.",
)
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="An empty (or absent) dir for one replica of the new cell.",
)
def restore(snapshot_file: str, data_dir: str) -> None:
    """Prepare an empty data dir from a snapshot: `borgmaster run` on it starts a new cell.

    Restore one dir per replica from the same file, then start each replica on its dir with
    any --id/--raft/--peer. Jobs, tasks, quotas, versions and events are kept; Borglets
    re-register and re-adopt their running tasks (docs/operations.md)."""
    from borgmaster.restore import RestoreError
    from borgmaster.restore import restore as do_restore

    os.umask(0o077)
    try:
        got = do_restore(snapshot_file, data_dir)
    except (RestoreError, OSError, DataDirError) as e:
        click.echo(f"borgmaster: restore: {e}", err=True)
        sys.exit(1)
    info = got.info
    click.echo(
        f"restored {data_dir} from a snapshot of cell {info.cell} at index {info.index} "
        f"(term {info.term}): {got.jobs} jobs, {got.tasks} tasks, {got.machines} machines; "
        f"start `borgmaster run --data-dir {data_dir}` on it"
    )


@main.group()
def ca() -> None:
    """The cell's certificate authority: `ca init`, then `ca issue` per master, Borglet and
    person."""


@ca.command("init")
@click.option("--dir", "ca_dir", required=True, type=click.Path(file_okay=False))
@click.option("--cell", default="borgcell", show_default=True, help="The cell's name.")
@click.option("--days", default=3650, show_default=True, help="Validity of the CA.")
def ca_init(ca_dir: str, cell: str, days: int) -> None:
    """Create DIR/ca.crt and DIR/ca.key (0600): a new cell CA."""
    from borgmaster.ca import CaError, init_ca

    try:
        path = init_ca(ca_dir, cell, days)
    except (CaError, OSError) as e:
        click.echo(f"borgmaster: ca init: {e}", err=True)
        sys.exit(1)
    click.echo(f"cell CA of {cell}: {path} (keep {os.path.join(ca_dir, 'ca.key')} secret)")


@ca.command("issue")
@click.option("--dir", "ca_dir", required=True, type=click.Path(file_okay=False))
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--name", required=True, help="The holder: user name, machine name, replica id.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where to write.")
@click.option("--host", "hosts", multiple=True, help="A DNS name or IP it serves on (SAN).")
@click.option("--days", default=365, show_default=True, help="Validity of the certificate.")
def ca_issue(
    ca_dir: str, role: str, name: str, out: str, hosts: tuple[str, ...], days: int
) -> None:
    """Sign a certificate: OUT gets ca.crt, tls.crt and tls.key (0600)."""
    from borgmaster.ca import CaError, issue

    try:
        got = issue(ca_dir, role, name, out, hosts, days)
    except (CaError, OSError) as e:
        click.echo(f"borgmaster: ca issue: {e}", err=True)
        sys.exit(1)
    click.echo(
        f"{got.role.value} {got.name}: {out}/ (valid until {got.not_after:%Y-%m-%d %H:%M} UTC)"
    )


if __name__ == "__main__":
    main()
