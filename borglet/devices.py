"""GPU devices of this machine, behind one interface: what exists, which are healthy, what a
task's environment and device cgroup say, and per-device usage.

Three sources (`borglet run --gpus`):
- `auto` (the default): NVML through nvidia-ml-py (`pynvml`, imported lazily: a machine
  without the package or the driver simply has no GPUs);
- `I,J,...`: devices declared by index, for hosts without NVML (and for tests);
- `none`: no GPUs offered.

The master names the devices each task gets (DesiredTask.gpus: the indices offered here, as
strings); the Borglet only turns those names into `CUDA_VISIBLE_DEVICES` /
`NVIDIA_VISIBLE_DEVICES` (UUIDs when NVML knows them, else indices) and into the task's device
cgroup (every `/dev/nvidiaN` that is not the task's own is denied; see `denied_nodes`).

A device NVML cannot query any more (GPU lost, driver error) or that reports uncorrected
volatile ECC errors is unhealthy: it stops being offered, so the master places nothing new
on it. Tasks already holding it keep it; the operator drains the machine.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("borglet")

NVIDIA_NODE = re.compile(r"^nvidia(\d+)$")
"""The per-device nodes (`/dev/nvidia0`); nvidiactl, nvidia-uvm and friends are shared by
every CUDA process and stay allowed."""

MAX_DECLARED = 64


@dataclass(frozen=True)
class Gpu:
    """One device. `index` is its NVML index (or the declared one) and, as a string, the id
    the master assigns; `minor` is the N of its `/dev/nvidiaN`."""

    index: int
    uuid: str = ""
    name: str = ""
    memory_total: int = 0
    minor: int | None = None
    healthy: bool = True
    why: str = ""  # why it is unhealthy

    @property
    def id(self) -> str:
        return str(self.index)

    @property
    def node_minor(self) -> int:
        return self.index if self.minor is None else self.minor


@dataclass(frozen=True)
class GpuUsage:
    """A device's utilisation (percent of time a kernel ran, last sample period) and memory
    in use (bytes). Devices are never shared, so this is the holding task's usage."""

    utilization: float
    memory_used: int


class Devices(ABC):
    source = "none"

    @abstractmethod
    def discover(self) -> list[Gpu]:
        """Every device, with its health as of now."""

    def usage(self, gpu: Gpu) -> GpuUsage | None:
        """The device's usage, or None when this source cannot measure it."""
        return None

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release the library (NVML) if one was opened."""


class NoDevices(Devices):
    source = "none"

    def __init__(self, why: str = "") -> None:
        self.why = why

    def discover(self) -> list[Gpu]:
        return []


class DeclaredDevices(Devices):
    """Devices the operator declared by index: always healthy, no usage, no UUIDs."""

    source = "declared"

    def __init__(self, indices: list[int]) -> None:
        self.indices = list(indices)

    def discover(self) -> list[Gpu]:
        return [Gpu(index=i) for i in self.indices]


class NvmlDevices(Devices):
    """Devices as NVML reports them. `nvml` is the `pynvml` module (a fake in tests); it is
    initialised here and shut down by `close`."""

    source = "nvml"

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        nvml.nvmlInit()

    def discover(self) -> list[Gpu]:
        n = self.nvml
        try:
            count = int(n.nvmlDeviceGetCount())
        except n.NVMLError as e:
            log.warning("NVML: cannot count devices: %s", e)
            return []
        return [self._one(i) for i in range(count)]

    def _one(self, i: int) -> Gpu:
        n = self.nvml
        try:
            h = n.nvmlDeviceGetHandleByIndex(i)
            uuid = _text(n.nvmlDeviceGetUUID(h))
            name = _text(n.nvmlDeviceGetName(h))
            total = int(n.nvmlDeviceGetMemoryInfo(h).total)
        except n.NVMLError as e:
            return Gpu(index=i, healthy=False, why=f"NVML: {e}")
        minor: int | None = None
        try:
            minor = int(n.nvmlDeviceGetMinorNumber(h))
        except n.NVMLError:
            pass  # not on every platform: then /dev/nvidia<index>
        why = ""
        try:
            ecc = int(
                n.nvmlDeviceGetTotalEccErrors(
                    h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC
                )
            )
            if ecc > 0:
                why = f"{ecc} uncorrected ECC errors"
        except n.NVMLError:
            pass  # ECC not supported or not enabled: no verdict from it
        return Gpu(i, uuid, name, total, minor, healthy=not why, why=why)

    def usage(self, gpu: Gpu) -> GpuUsage | None:
        n = self.nvml
        try:
            h = n.nvmlDeviceGetHandleByIndex(gpu.index)
            util = n.nvmlDeviceGetUtilizationRates(h)
            mem = n.nvmlDeviceGetMemoryInfo(h)
        except n.NVMLError:
            return None
        return GpuUsage(utilization=float(util.gpu), memory_used=int(mem.used))

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # shutting down: nothing left to do about it
            pass


def _text(v: Any) -> str:
    """NVML strings are bytes in some versions of the bindings, str in others."""
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def parse_gpus(value: str) -> str | list[int]:
    """`--gpus`: "auto", "none", or distinct device indices `I,J,...` (ValueError says
    what is wrong)."""
    v = value.strip()
    if v in ("auto", "none"):
        return v
    out: list[int] = []
    for part in v.split(","):
        p = part.strip()
        if not p.isdigit():
            raise ValueError(f"{value!r} is not auto, none or device indices I,J,...")
        i = int(p)
        if i in out:
            raise ValueError(f"device {i} is listed twice")
        out.append(i)
    if len(out) > MAX_DECLARED:
        raise ValueError(f"at most {MAX_DECLARED} devices")
    return out


def import_nvml() -> Any:
    # Imported here: only machines with NVIDIA GPUs need the package.
    import pynvml

    return pynvml


def open_devices(value: str, load_nvml: Callable[[], Any] = import_nvml) -> Devices:
    """The devices `--gpus VALUE` means. `auto` falls back to none (and says why in the log)
    when the bindings or the driver are absent."""
    parsed = parse_gpus(value)
    if parsed == "none":
        return NoDevices()
    if isinstance(parsed, list):
        return DeclaredDevices(parsed)
    try:
        nvml = load_nvml()
    except ImportError:
        log.info("--gpus auto: nvidia-ml-py is not installed: no GPUs")
        return NoDevices("nvidia-ml-py is not installed")
    try:
        return NvmlDevices(nvml)
    except Exception as e:  # NVMLError: no driver, no library, no permission
        log.info("--gpus auto: NVML unavailable (%s): no GPUs", e)
        return NoDevices(f"NVML unavailable: {e}")


def visible_devices(gpus: list[Gpu]) -> str:
    """`CUDA_VISIBLE_DEVICES` / `NVIDIA_VISIBLE_DEVICES` for these devices: their UUIDs when
    all are known (stable whatever order CUDA enumerates in), else their indices."""
    if gpus and all(g.uuid for g in gpus):
        return ",".join(g.uuid for g in gpus)
    return ",".join(g.id for g in gpus)


def gpu_env(own: list[Gpu], machine_has_gpus: bool) -> dict[str, str]:
    """What a task's environment says about GPUs: its own devices, or (on a machine with
    GPUs) explicitly none, so CUDA does not default to every device."""
    if own:
        v = visible_devices(own)
        return {"CUDA_VISIBLE_DEVICES": v, "NVIDIA_VISIBLE_DEVICES": v}
    if machine_has_gpus:
        return {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "none"}
    return {}


def denied_nodes(dev_dir: str, own: list[Gpu]) -> list[tuple[str, int, int]]:
    """Device-cgroup entries (`("c", major, minor)`) for every `dev_dir/nvidiaN` char device
    that is not one of `own`: a task may open only its own GPUs. Nodes are looked at with
    lstat (never opened, symlinks not followed); an unreadable dir means none."""
    mine = {g.node_minor for g in own}
    try:
        names = sorted(os.listdir(dev_dir))
    except OSError:
        return []
    out = []
    for name in names:
        m = NVIDIA_NODE.match(name)
        if m is None or int(m.group(1)) in mine:
            continue
        try:
            st = os.lstat(os.path.join(dev_dir, name))
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode):
            out.append(("c", os.major(st.st_rdev), os.minor(st.st_rdev)))
    return out
