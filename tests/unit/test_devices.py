"""borglet/devices.py: the NVML path against a fake `pynvml` (no GPU here: a real one is only
checked on a GPU host, see docs/borglet.md), declared devices, `--gpus` parsing, the task
environment and the device-cgroup deny list; and the Borglet using them (FakeRuntime)."""

from __future__ import annotations

import getpass
import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import borglet.agent
from borglet.agent import Borglet, BorgletConfig
from borglet.devices import (
    DeclaredDevices,
    Gpu,
    NoDevices,
    NvmlDevices,
    denied_nodes,
    gpu_env,
    open_devices,
    parse_gpus,
    visible_devices,
)
from borglet.link import MasterLink
from borglet.metrics import BorgletCollector
from borglet.runtime.fake import FakeRuntime
from borglet.state import Desired
from cfg.model import JobSpec, Requirements
from tests.cluster import wait_for as cluster_wait_for


class FakeNvml:
    """The part of pynvml the Borglet uses, with devices whose state a test changes."""

    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0

    class NVMLError(Exception):
        pass

    class NVMLError_GpuIsLost(NVMLError):
        pass

    def __init__(self, n: int, init_error: str = "") -> None:
        self.devs = [
            {
                "uuid": f"GPU-{i:04d}-fake".encode(),  # bytes, as older bindings return
                "name": "Fake H100",
                "total": 80 << 30,
                "used": (i + 1) << 30,
                "util": 10 * (i + 1),
                "minor": i,
                "ecc": 0,
                "lost": False,
            }
            for i in range(n)
        ]
        self.init_error = init_error
        self.shut = False

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devs)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, Any]:
        d = self.devs[i]
        if d["lost"]:
            raise self.NVMLError_GpuIsLost("GPU is lost")
        return d

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> bytes:
        return bytes(h["uuid"])

    def nvmlDeviceGetName(self, h: dict[str, Any]) -> str:
        return str(h["name"])

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(total=h["total"], used=h["used"], free=h["total"] - h["used"])

    def nvmlDeviceGetMinorNumber(self, h: dict[str, Any]) -> int:
        return int(h["minor"])

    def nvmlDeviceGetTotalEccErrors(self, h: dict[str, Any], kind: int, counter: int) -> int:
        assert (kind, counter) == (1, 0)  # uncorrected, volatile
        return int(h["ecc"])

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(gpu=h["util"], memory=0)


def test_nvml_discovery_count_uuid_memory_minor() -> None:
    nv = FakeNvml(2)
    nv.devs[1]["minor"] = 5
    devs = NvmlDevices(nv)
    gpus = devs.discover()
    assert [(g.id, g.uuid, g.memory_total, g.node_minor, g.healthy) for g in gpus] == [
        ("0", "GPU-0000-fake", 80 << 30, 0, True),
        ("1", "GPU-0001-fake", 80 << 30, 5, True),
    ]
    u = devs.usage(gpus[1])
    assert u is not None and (u.utilization, u.memory_used) == (20.0, 2 << 30)
    devs.close()
    assert nv.shut


def test_nvml_unhealthy_devices_lost_or_ecc() -> None:
    nv = FakeNvml(3)
    devs = NvmlDevices(nv)
    nv.devs[0]["ecc"] = 2
    nv.devs[2]["lost"] = True
    gpus = devs.discover()
    assert [g.healthy for g in gpus] == [False, True, False]
    assert gpus[0].why == "2 uncorrected ECC errors"
    assert "GPU is lost" in gpus[2].why
    assert devs.usage(gpus[2]) is None


def test_auto_falls_back_to_none_without_nvml() -> None:
    def missing() -> Any:
        raise ImportError("No module named 'pynvml'")

    assert isinstance(open_devices("auto", missing), NoDevices)
    broken = open_devices("auto", lambda: FakeNvml(1, init_error="Driver Not Loaded"))
    assert isinstance(broken, NoDevices) and "Driver Not Loaded" in broken.why
    assert isinstance(open_devices("auto", lambda: FakeNvml(1)), NvmlDevices)
    assert isinstance(open_devices("none", missing), NoDevices)
    declared = open_devices("0,3", missing)
    assert isinstance(declared, DeclaredDevices)
    assert [g.id for g in declared.discover()] == ["0", "3"]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("0,x", "'0,x' is not auto, none or device indices I,J,..."),
        ("1,1", "device 1 is listed twice"),
        ("-1", "'-1' is not auto, none or device indices I,J,..."),
        ("", "'' is not auto, none or device indices I,J,..."),
    ],
)
def test_parse_gpus_errors(value: str, error: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_gpus(value)
    assert str(e.value) == error


def test_env_uuids_when_known_else_indices_and_none_on_gpu_machines() -> None:
    assert visible_devices([Gpu(0, "GPU-a"), Gpu(2, "GPU-c")]) == "GPU-a,GPU-c"
    assert visible_devices([Gpu(0), Gpu(2)]) == "0,2"
    assert gpu_env([Gpu(1)], True) == {"CUDA_VISIBLE_DEVICES": "1", "NVIDIA_VISIBLE_DEVICES": "1"}
    assert gpu_env([], True) == {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "none"}
    assert gpu_env([], False) == {}


def test_denied_nodes_ignore_what_is_not_a_char_device(tmp_path: Path) -> None:
    # Regular files named like device nodes are not devices: nothing to deny.
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).write_text("")
    assert denied_nodes(str(tmp_path), []) == []
    assert denied_nodes(str(tmp_path / "absent"), []) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mknod device nodes")
def test_denied_nodes_are_every_other_nvidia_char_device(tmp_path: Path) -> None:
    for minor, name in [(0, "nvidia0"), (1, "nvidia1"), (2, "nvidia2"), (255, "nvidiactl")]:
        os.mknod(tmp_path / name, 0o600 | stat.S_IFCHR, os.makedev(195, minor))
    os.symlink(tmp_path / "nvidia1", tmp_path / "nvidia7")  # never followed
    assert denied_nodes(str(tmp_path), [Gpu(1)]) == [("c", 195, 0), ("c", 195, 2)]
    assert denied_nodes(str(tmp_path), [Gpu(0, minor=2)]) == [("c", 195, 0), ("c", 195, 1)]
    assert len(denied_nodes(str(tmp_path), [])) == 3


# ----- the Borglet with a fake NVML ----------------------------------------------------------


class QuietLink:
    connected = True

    def __init__(self) -> None:
        self.pokes = 0

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def poke(self) -> None:
        self.pokes += 1


def wait_for(cond: Callable[[], object], timeout: float = 5.0) -> None:
    cluster_wait_for(cond, timeout, interval=0.005)


def test_borglet_offers_healthy_gpus_and_gives_a_task_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(borglet.agent, "first_closed_dir", lambda path: "")
    nv = FakeNvml(2)
    cfg = BorgletConfig(
        name="m1",
        masters=["127.0.0.1:1"],
        grpc="",
        http="",
        data_dir=str(tmp_path / "data"),
        cpu=2,
        memory=1 << 30,
        task_user=getpass.getuser(),
        allow_root=True,
        dev_dir=str(tmp_path / "dev"),
    )
    runtime = FakeRuntime()
    link = QuietLink()
    b = Borglet(cfg, runtime=runtime, link=link, devices=NvmlDevices(nv))
    b.start()
    try:
        # What the Sync says: capacity and device ids.
        req, _ = MasterLink(cfg, b, []).request(0)
        assert (req.capacity.gpu, list(req.gpus)) == (2, ["0", "1"])
        spec = JobSpec(
            name="train",
            command=["sleep", "100"],
            env={"CUDA_VISIBLE_DEVICES": "0,1"},  # a job cannot name devices itself
            requirements=Requirements(gpu=1),
        )
        d = Desired("train", 0, "inc1", 1, spec, gpus=["1"])
        b.on_desired([d], frozenset(), "c")
        wait_for(lambda: "train.0.inc1" in runtime.running)
        env = runtime.running["train.0.inc1"].spec.env  # type: ignore[union-attr]
        assert env["CUDA_VISIBLE_DEVICES"] == "GPU-0001-fake"
        assert env["NVIDIA_VISIBLE_DEVICES"] == "GPU-0001-fake"
        assert b.states.tasks[d.key].gpus == ["1"]
        wait_for(lambda: b.states.tasks[d.key].phase == "active")
        # /metrics: the task's device usage, and the machine's GPU capacity and allocation.
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for m in BorgletCollector(b).collect()
            for s in m.samples
        }
        key = (("gpu", "1"), ("index", "0"), ("job", "train"), ("uuid", "GPU-0001-fake"))
        assert samples[("borg_task_gpu_utilization_ratio", key)] == 0.2
        assert samples[("borg_task_gpu_memory_bytes", key)] == 2 << 30
        assert samples[("borg_machine_capacity", (("resource", "gpu"),))] == 2
        assert samples[("borg_machine_allocated", (("resource", "gpu"),))] == 1
        # Device 0 turns unhealthy: it stops being offered, and the master hears at once.
        nv.devs[0]["ecc"] = 1
        pokes = link.pokes
        b.refresh_usage()
        assert b.offered_gpus() == ["1"] and link.pokes == pokes + 1
        req, _ = MasterLink(cfg, b, []).request(0)
        assert (req.capacity.gpu, list(req.gpus)) == (1, ["1"])
    finally:
        b.stop()
    # The state file keeps the task's devices for the next Borglet.
    b2 = Borglet(cfg, runtime=runtime, link=QuietLink(), devices=NvmlDevices(nv))
    b2.start()
    try:
        assert b2.states.tasks[d.key].gpus == ["1"]
    finally:
        b2.stop()
