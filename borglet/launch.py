"""What starting a task takes besides the spawn itself: the account check, the task's
environment, the spawn spec, and sorting failures into permanent ones (the task can never run
here as specified: failed at once, no restart storm) and transient ones (the machine could not
start it now: a failed run, through the restart policy and its backoff)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from borglet.accounts import TaskAccounts
from borglet.runtime.base import Process, Runtime
from borglet.runtime.cgroups import CgroupError, Limits
from borglet.runtime.process import ExecError, SpawnSpec, UserError
from borglet.state import Desired, StartFailed, TaskKey, task_id_of
from cfg.bns import task_name
from cfg.model import JobSpec


@dataclass
class NotLaunched(Exception):
    reason: str
    permanent: bool
    exit_code: int | None = None

    def event(self, key: TaskKey) -> StartFailed:
        return StartFailed(key, self.reason, self.permanent, self.exit_code)


def account_of(accounts: TaskAccounts, run_as: str, default: str, unreachable_dir: str) -> str:
    """The unix account the task runs as, if this Borglet allows it (NotLaunched if not)."""
    user = run_as or default
    try:
        accounts.resolve(run_as)
        if unreachable_dir and user != "root":
            raise UserError(f"sandbox not reachable by {user}: {unreachable_dir} is not searchable")
    except UserError as e:
        raise NotLaunched(f"run_as: {e}", permanent=True) from None
    return user


class TaskLike(Protocol):
    """A desired or a running task: what its environment is made of."""

    @property
    def job(self) -> str: ...

    @property
    def index(self) -> int: ...

    version: int
    spec: JobSpec


def task_env(
    d: TaskLike,
    cell: str,
    machine: str,
    ports: dict[str, int],
    gpus: dict[str, str] | None = None,
) -> dict[str, str]:
    """The job's env plus what the Borglet tells every task (BORG_*), ports included, and
    `gpus` (CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES: devices.gpu_env), which win over
    the job's own values: a job cannot name another task's devices."""
    env = dict(d.spec.env)
    env.update(
        {
            "BORG_CELL": cell,
            "BORG_JOB": d.job,
            "BORG_TASK_INDEX": str(d.index),
            "BORG_MACHINE": machine,
            "BORG_TASK_VERSION": str(d.version),
            "BORG_NAME": task_name(d.index, d.job, d.spec.user, cell),
        }
    )
    for i, p in enumerate(d.spec.requirements.ports):
        env[f"BORG_PORT_{p.upper().replace('-', '_')}"] = str(ports[p])
        if i == 0:
            env["BORG_PORT"] = str(ports[p])
    env.update(gpus or {})
    return env


def spawn(
    runtime: Runtime,
    d: Desired,
    user: str,
    env: dict[str, str],
    sandbox: str,
    pids_max: int,
    deny_devices: tuple[tuple[str, int, int], ...] = (),
) -> Process:
    """Start the task's supervisor; NotLaunched (permanent or not) when it could not start.
    `deny_devices`: device nodes its cgroup must refuse (other tasks' GPUs)."""
    req = d.spec.requirements
    try:
        return runtime.start(
            SpawnSpec(
                task_id=task_id_of(d.key),
                argv=list(d.spec.command),
                env=env,
                sandbox=sandbox,
                user=user,
                limits=Limits(
                    cpu=req.cpu, memory=req.ram, pids=pids_max, deny_devices=deny_devices
                ),
            )
        )
    except UserError as e:
        raise NotLaunched(f"run_as: {e}", permanent=True) from None
    except ExecError as e:
        raise NotLaunched(str(e), permanent=True, exit_code=e.code) from None
    except (OSError, ValueError, CgroupError) as e:
        raise NotLaunched(f"start-failed: {e}", permanent=False) from None
