"""The Borglet's configuration (`borglet run` flags), shared by the shell's parts."""

from __future__ import annotations

from dataclasses import dataclass, field

from cfg.model import Taint
from cfg.tls import TlsDir


@dataclass
class BorgletConfig:
    name: str
    masters: list[str]
    grpc: str
    http: str
    data_dir: str
    cpu: float
    memory: int
    disk: int = 0
    # `--gpus`: auto (NVML), none, or declared device indices I,J,... (borglet/devices.py).
    gpus: str = "none"
    dev_dir: str = "/dev"  # where the /dev/nvidiaN nodes are (tests point it elsewhere)
    attrs: dict[str, str] = field(default_factory=dict)
    taints: list[Taint] = field(default_factory=list)
    task_user: str = "nobody"
    task_users: list[str] = field(default_factory=list)  # more accounts run_as may name
    allow_root: bool = False
    kill_tasks_on_exit: bool = False
    cgroup_root: str = "/sys/fs/cgroup"
    cgroup_parent: str = ""
    reserve_cpu: float = 0.0
    reserve_memory: int = 0
    port_range: tuple[int, int] = (20000, 32000)
    log_max_size: int = 10 << 20
    log_keep: int = 3
    task_pids_max: int = 4096
    usage_interval_s: float = 5.0
    tls: TlsDir | None = None
    """`--tls-dir`: mTLS to the masters (which must hold master certificates), logs served to
    masters only, HTTPS on the HTTP port."""

    @property
    def offered_cpu(self) -> float:
        """Cores offered to the cell: the machine's minus what is reserved for the system."""
        return max(0.0, self.cpu - self.reserve_cpu)

    @property
    def offered_memory(self) -> int:
        return max(0, self.memory - self.reserve_memory)
