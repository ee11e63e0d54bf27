"""`borglet run`: the agent on every machine of the cell."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading

import click
import psutil

from borglet.accounts import AccountError, TaskAccounts
from borglet.agent import Borglet, BorgletConfig
from borglet.devices import parse_gpus
from borglet.ports import parse_range
from cfg import datadir
from cfg.errors import ConfigError
from cfg.logsetup import log_options, setup_logging
from cfg.model import Taint, TaintEffect
from cfg.options import key_values
from cfg.tls import Role, TlsDir, cert_identity
from cfg.units import parse_size

log = logging.getLogger("borglet")


# The effects `--taint` offers (NoExecute is only known to the scheduler; nothing evicts).
TAINT_FLAG_EFFECTS = (TaintEffect.NO_SCHEDULE, TaintEffect.PREFER_NO_SCHEDULE)


LOCK_FILE = "borglet.lock"
"""Held (flock) by the one Borglet that uses the data dir; it holds that Borglet's pid."""


def lock_data_dir(data_dir: str) -> None:
    """Take the data dir for this Borglet, or raise DataDirInUse naming the holder's pid
    (cfg/datadir.py). Its tasks run on when the Borglet dies, and their supervisors do not
    hold the lock, so the next Borglet on the dir takes it and re-adopts them."""
    datadir.lock(data_dir, LOCK_FILE, mode=0o711)


def _taints(values: tuple[str, ...]) -> list[Taint]:
    out = []
    for v in values:
        try:
            taint = Taint.parse(v)
        except ValueError:
            taint = None
        if taint is None or taint.effect not in TAINT_FLAG_EFFECTS:
            raise click.BadParameter(f"'{v}' is not KEY=VALUE:NoSchedule", param_hint="--taint")
        out.append(taint)
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The Borglet: runs the cell's tasks on this machine."""


@main.command()
@click.option("--name", default=lambda: socket.gethostname().split(".")[0], show_default="host")
@click.option("--master", "masters", required=True, help="HOST:PORT[,HOST:PORT...] of masters.")
@click.option("--grpc", "grpc_addr", required=True, help="HOST:PORT for the Borglet's gRPC.")
@click.option("--http", "http_addr", required=True, help="HOST:PORT for /metrics and /healthz.")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False))
@click.option("--cpu", type=float, default=None, help="Cores offered (default: all).")
@click.option(
    "--memory",
    default=None,
    help="Memory offered, e.g. 8Gi (default: all RAM; see --reserve-memory).",
)
@click.option("--disk", default=None, help="Disk offered (default: free space of --data-dir).")
@click.option("--attr", "attrs", multiple=True, help="KEY=VALUE machine attribute.")
@click.option("--taint", "taints", multiple=True, help="KEY=VALUE:NoSchedule")
@click.option(
    "--task-user", default="nobody", show_default=True, help="Account of jobs without run_as."
)
@click.option(
    "--task-users",
    default="",
    help="Other accounts a job's run_as may name, A,B,... (default: only --task-user).",
)
@click.option(
    "--allow-root-tasks",
    is_flag=True,
    help="Let tasks run as root-equivalent accounts (uid/gid 0, sudo, disk, docker ...).",
)
@click.option(
    "--tls-dir",
    envvar="BORG_TLS_DIR",
    type=click.Path(file_okay=False),
    default=None,
    help="ca.crt, tls.crt, tls.key of this machine (`ca issue --role borglet --name NAME`): "
    "mTLS to the masters, logs for masters only, HTTPS.",
)
@click.option("--cgroup-root", default="/sys/fs/cgroup", show_default=True)
@click.option("--kill-tasks-on-exit", is_flag=True, help="Stop every task when exiting (dev).")
@click.option(
    "--reserve-cpu",
    type=float,
    default=0.0,
    show_default=True,
    help="Cores kept for the system (subtracted from the capacity offered).",
)
@click.option(
    "--reserve-memory", default="0", show_default=True, help="Memory kept for the system, e.g. 1Gi."
)
@click.option(
    "--port-range",
    default="20000-32000",
    show_default=True,
    help="LOW-HIGH: ports handed to tasks' requirements.ports.",
)
@click.option(
    "--log-max-size",
    default="10Mi",
    show_default=True,
    help="Rotate a task's stdout/stderr at this size.",
)
@click.option(
    "--log-keep",
    type=click.IntRange(0, 100),
    default=3,
    show_default=True,
    help="Rotated log files kept per stream.",
)
@click.option(
    "--task-pids-max",
    type=click.IntRange(8, 1 << 22),
    default=4096,
    show_default=True,
    help="pids.max of every task cgroup.",
)
@click.option(
    "--usage-interval",
    type=click.FloatRange(0.1, 3600),
    default=5.0,
    show_default=True,
    help="Seconds between usage reads for the master.",
)
@click.option(
    "--gpus",
    default="auto",
    show_default=True,
    help="GPUs offered: auto (NVML; none without it), none, or device indices I,J,...",
)
@click.option("--dev-dir", default="/dev", hidden=True, help="Where /dev/nvidiaN live (tests).")
@click.option("-v", "--verbose", is_flag=True, help="Same as --log-level debug.")
@log_options
def run(
    name: str,
    masters: str,
    grpc_addr: str,
    http_addr: str,
    data_dir: str,
    cpu: float | None,
    memory: str | None,
    disk: str | None,
    attrs: tuple[str, ...],
    taints: tuple[str, ...],
    task_user: str,
    task_users: str,
    allow_root_tasks: bool,
    tls_dir: str | None,
    cgroup_root: str,
    kill_tasks_on_exit: bool,
    reserve_cpu: float,
    reserve_memory: str,
    port_range: str,
    log_max_size: str,
    log_keep: int,
    task_pids_max: int,
    usage_interval: float,
    gpus: str,
    dev_dir: str,
    verbose: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run the Borglet."""
    setup_logging("debug" if verbose else log_level, log_format)
    try:
        # SPEC: capacity defaults to the real machine; --reserve-memory keeps headroom.
        mem = parse_size(memory) if memory else int(psutil.virtual_memory().total)
        dsk = parse_size(disk) if disk else None
        reserve_mem = parse_size(reserve_memory)
        log_max = parse_size(log_max_size)
        ports = parse_range(port_range)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    try:
        parse_gpus(gpus)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--gpus") from None
    if reserve_cpu < 0:
        raise click.BadParameter("must be >= 0", param_hint="--reserve-cpu")
    if log_max < 4096:
        raise click.BadParameter("must be at least 4Ki", param_hint="--log-max-size")
    extra_users = [u.strip() for u in task_users.split(",") if u.strip()]
    try:
        TaskAccounts.of(task_user, extra_users, allow_root_tasks).check_all()
    except AccountError as e:
        click.echo(f"borglet: --task-users: {e}", err=True)
        sys.exit(2)
    # Everything the Borglet writes is its own unless it says otherwise (state file, control
    # dirs); the data dir itself stays traversable so tasks reach their (0700) sandboxes.
    tls = _load_tls(tls_dir, name)
    os.umask(0o077)
    os.makedirs(data_dir, exist_ok=True)
    try:
        lock_data_dir(data_dir)
    except OSError as e:
        click.echo(f"borglet: {e}", err=True)
        sys.exit(1)
    os.chmod(data_dir, 0o711)
    if dsk is None:
        dsk = psutil.disk_usage(data_dir).free
    cfg = BorgletConfig(
        name=name,
        masters=[m.strip() for m in masters.split(",") if m.strip()],
        grpc=grpc_addr,
        http=http_addr,
        data_dir=os.path.abspath(data_dir),
        cpu=cpu if cpu is not None else float(psutil.cpu_count() or 1),
        memory=mem,
        disk=dsk,
        attrs=key_values(attrs, "--attr"),
        taints=_taints(taints),
        task_user=task_user,
        task_users=extra_users,
        allow_root=allow_root_tasks,
        kill_tasks_on_exit=kill_tasks_on_exit,
        cgroup_root=cgroup_root,
        reserve_cpu=reserve_cpu,
        reserve_memory=reserve_mem,
        port_range=ports,
        log_max_size=log_max,
        log_keep=log_keep,
        task_pids_max=task_pids_max,
        usage_interval_s=usage_interval,
        tls=tls,
        gpus=gpus,
        dev_dir=dev_dir,
    )
    borglet = Borglet(cfg)
    try:
        borglet.start()
    except OSError as e:
        click.echo(f"borglet: {e}", err=True)
        sys.exit(1)
    if tls is None:  # said once it runs (a start that fails says only why)
        log.warning("no --tls-dir: plaintext, and this Borglet trusts any caller as a master")
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.wait(0.5):
        pass
    borglet.stop()


def _load_tls(tls_dir: str | None, name: str) -> TlsDir | None:
    """The machine's certificate, checked now: it must be a Borglet's for this --name (the
    masters accept a Sync only from the machine its certificate names)."""
    return _checked_tls(tls_dir, Role.BORGLET, (name,), f"borglet {name}")


def _checked_tls(
    tls_dir: str | None, role: Role, names: tuple[str, ...], wanted: str
) -> TlsDir | None:
    """The TLS dir, if given, whose certificate is of `role` for one of `names`; else one
    line naming what it holds and exit 2."""
    if not tls_dir:
        return None
    try:
        tls = TlsDir.load(tls_dir)
    except ConfigError as e:
        click.echo(f"borglet: {e}", err=True)
        sys.exit(2)
    ident = cert_identity(tls.cert_file)
    if ident is None or ident.role is not role or ident.name not in names:
        got = f"{ident.role.value} {ident.name}" if ident else "no borgcell identity"
        click.echo(
            f"borglet: --tls-dir {tls_dir}: the certificate is for {got}, not {wanted}", err=True
        )
        sys.exit(2)
    return tls


@main.command()
@click.option("--count", type=click.IntRange(1, 100_000), required=True, help="Machines.")
@click.option("--master", "masters", required=True, help="HOST:PORT[,HOST:PORT...] of masters.")
@click.option("--name-prefix", default="hollow-", show_default=True, help="Machines PREFIX00000..")
@click.option("--first", type=click.IntRange(0, 99_999), default=0, hidden=True)
@click.option("--cpu", type=float, default=8.0, show_default=True, help="Cores per machine.")
@click.option("--memory", default="32Gi", show_default=True, help="Memory per machine.")
@click.option("--attr", "attrs", multiple=True, help="KEY=VALUE attribute of every machine.")
@click.option(
    "--start-ms",
    type=click.IntRange(0, 3_600_000),
    default=0,
    show_default=True,
    help="A desired task is reported running this long after it first arrives.",
)
@click.option(
    "--ramp-s",
    type=click.FloatRange(0, 600),
    default=None,
    help="Spread the machines' first syncs over this many seconds (default: 1 s per 1,000).",
)
@click.option(
    "--tls-dir",
    envvar="BORG_TLS_DIR",
    type=click.Path(file_okay=False),
    default=None,
    help="A hollow certificate (`ca issue --role hollow --name NAME`) for machines "
    "NAME00000.. or NAME-00000..: --name-prefix must be NAME or NAME-.",
)
@click.option(
    "--protocol",
    type=click.Choice(["stream", "sync"]),
    default="stream",
    show_default=True,
    help="stream: one Link stream per machine to any replica (as `borglet run`); sync: the "
    "older unary Sync long-poll to the leader (for comparison).",
)
@click.option("-v", "--verbose", is_flag=True, help="Same as --log-level debug.")
@log_options
def hollow(
    count: int,
    masters: str,
    name_prefix: str,
    first: int,
    cpu: float,
    memory: str,
    attrs: tuple[str, ...],
    start_ms: int,
    ramp_s: float | None,
    tls_dir: str | None,
    protocol: str,
    verbose: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Simulate COUNT machines in this process on the real protocol (no tasks run)."""
    import asyncio

    from borglet.hollow import Fleet, make_machines

    setup_logging("debug" if verbose else log_level, log_format)
    try:
        mem = parse_size(memory)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--memory") from None
    if first + count > 100_000:
        raise click.BadParameter("names have five digits: --first + --count <= 100000")
    tls = _load_hollow_tls(tls_dir, name_prefix)
    machines = make_machines(
        count, name_prefix, cpu, mem, key_values(attrs, "--attr"), start_ms, first=first
    )
    fleet = Fleet(
        machines,
        [m.strip() for m in masters.split(",") if m.strip()],
        tls=tls,
        ramp_s=count / 1000 if ramp_s is None else ramp_s,
        protocol=protocol,
    )

    async def main_loop() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, fleet.stop)
        log.info("hollow: %d machines %s.. syncing with %s", count, machines[0].name, masters)
        await fleet.run()

    asyncio.run(main_loop())


def _load_hollow_tls(tls_dir: str | None, prefix: str) -> TlsDir | None:
    """The fleet's hollow certificate, checked now against --name-prefix (the masters accept
    its Syncs only for machines named after it)."""
    wanted = f"a hollow certificate for --name-prefix {prefix}"
    return _checked_tls(tls_dir, Role.HOLLOW, (prefix, prefix.rstrip("-._")), wanted)


if __name__ == "__main__":
    main()
