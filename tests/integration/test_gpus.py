"""GPUs on a real cell with declared devices (`borglet run --gpus 0,1`; no GPU here): the
master names each task's devices, tasks see only their own (environment, and the v1 device
cgroup against device nodes made with mknod), gangs are placed whole or wait, and a restarted
Borglet keeps every task's devices."""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cell, Proc, wait_for
from tests.conftest import real_cell

pytestmark = [pytest.mark.e2e]

# Prints what it sees (its GPU environment, and what opening each device node gives), then
# stays up. ENXIO: the node is allowed but no driver is behind it (no GPU here); EPERM: the
# device cgroup refused it.
SEE = r"""
import errno, os, signal
env = os.environ
print("visible=%s nvidia=%s" % (env.get("CUDA_VISIBLE_DEVICES", "-"),
                               env.get("NVIDIA_VISIBLE_DEVICES", "-")), flush=True)
for n in (0, 1):
    try:
        os.close(os.open(os.path.join(env["DEVDIR"], "nvidia%d" % n), os.O_RDWR))
        r = "ok"
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
    print("nvidia%d=%s" % (n, r), flush=True)
while True:
    signal.pause()
"""


def make_nodes(base: str) -> tuple[str, str]:
    """base/dev with char devices nvidia0 and nvidia1 (major 195, like the driver's), and
    why not ('' when made)."""
    d = os.path.join(base, "dev")
    os.makedirs(d, mode=0o755, exist_ok=True)
    try:
        for n in (0, 1):
            os.mknod(os.path.join(d, f"nvidia{n}"), 0o666 | stat.S_IFCHR, os.makedev(195, n))
            os.chmod(os.path.join(d, f"nvidia{n}"), 0o666)
    except OSError as e:
        return d, f"cannot mknod device nodes here: {e.strerror}"
    return d, ""


NODES: dict[str, str] = {}  # "dev": the nodes' dir, "why": why there are none ('' if made)


@pytest.fixture(scope="module")
def cell() -> Iterator[Cell]:
    def gpu_machines(c: Cell) -> None:
        NODES["dev"], NODES["why"] = make_nodes(c.base)
        dev = NODES["dev"]
        c.add_borglet(cpu=2.0, memory="1Gi", extra=["--gpus", "0,1", "--dev-dir", dev])
        c.add_borglet(cpu=2.0, memory="1Gi", extra=["--gpus", "0", "--dev-dir", dev])
        c.wait_machines(2)

    yield from real_cell(gpu_machines, masters=1, borglets=0)


def job(tmp_path: Path, name: str, replicas: int, extra: str = "") -> str:
    p = tmp_path / f"{name}.yaml"
    p.write_text(
        f"name: {name}\nreplicas: {replicas}\nrun_as: nobody\nkill_timeout: 1s\n"
        f"command: {json.dumps(['python3', '-c', SEE])}\n"
        f"env: {{DEVDIR: {json.dumps(NODES['dev'])}}}\n"
        f"requirements: {{cpu: 0.05, ram: 32Mi, gpu: 1}}\n{extra}"
    )
    return str(p)


def tasks(cell: Cell, name: str) -> list[dict[str, Any]]:
    return list(cell.job(name)["tasks"])


def all_running(cell: Cell, name: str, n: int) -> bool:
    ts = tasks(cell, name)
    return len(ts) == n and all(t["state"] == "running" for t in ts)


def output(cell: Cell, name: str, index: int) -> str:
    return cell.borgcfg("logs", f"{name}/{index}", check=True).stdout


def seen(cell: Cell, name: str, index: int) -> str:
    """The task's output once it has printed all three lines."""
    wait_for(
        lambda: output(cell, name, index).count("nvidia1=") >= 1, 15, what=f"{name}/{index} out"
    )
    return output(cell, name, index)


def test_each_task_gets_whole_devices_of_its_own(cell: Cell, tmp_path: Path) -> None:
    cell.borgcfg("up", job(tmp_path, "iso", 3), check=True)
    wait_for(lambda: all_running(cell, "iso", 3), 30, what="iso running")
    held = [(t["machine"], tuple(t["gpus"])) for t in tasks(cell, "iso")]
    # Three devices in the cell, three tasks: each holds one, none shared.
    assert all(len(g) == 1 for _, g in held)
    assert len(set(held)) == 3
    b0, b1 = (b.info["name"] for b in cell.borglets)
    assert sorted(held) == [(b0, ("0",)), (b0, ("1",)), (b1, ("0",))]
    for t in tasks(cell, "iso"):
        (gpu,) = t["gpus"]
        assert f"visible={gpu} nvidia={gpu}\n" in seen(cell, "iso", t["index"])
    machines = {m["name"]: m for m in cell.borgcfg_json("machines")}
    assert (machines[b0]["capacity"]["gpu"], machines[b0]["used"]["gpu"]) == (2, 2)
    assert (machines[b0]["gpus"], machines[b0]["gpus_used"]) == (["0", "1"], ["0", "1"])
    assert (machines[b1]["gpus"], machines[b1]["gpus_used"]) == (["0"], ["0"])
    table = cell.borgcfg("machines", check=True).stdout
    assert "2/2 [0,1]" in table and "1/1 [0]" in table
    assert "GPUS" in cell.borgcfg("status", "iso", check=True).stdout
    # The UI: each task's devices on the job page, capacity and allocation per machine.
    ui = cell.masters[0].info["http"]
    code, body = cell.http_get(ui, "/jobs/iso")
    assert code == 200 and body.count("<span class='gpus'>gpu ") == 3
    code, body = cell.http_get(ui, "/")
    assert code == 200 and "<code class='gpus'>gpu 2/2</code>" in body
    assert "<code class='gpus'>gpu 1/1</code>" in body


def test_device_cgroup_lets_a_task_open_only_its_own_gpu(cell: Cell) -> None:
    if NODES["why"]:
        pytest.skip(NODES["why"])
    if not os.path.isdir("/sys/fs/cgroup/devices"):
        pytest.skip("host is not cgroup v1: no devices controller (v2 needs an eBPF program)")
    for t in tasks(cell, "iso"):
        (gpu,) = t["gpus"]
        other = "1" if gpu == "0" else "0"
        out = seen(cell, "iso", t["index"])
        # Its own node opens as far as the (absent) driver; the other one is refused.
        assert f"nvidia{gpu}=ENXIO" in out, out
        assert f"nvidia{other}=EPERM" in out, out


def test_gang_is_placed_whole_or_waits(cell: Cell, tmp_path: Path) -> None:
    # Every device is held by iso: the gang of two waits, all of it, and says why.
    cell.borgcfg("up", job(tmp_path, "gang", 2, "gang: true\n"), check=True)
    wait_for(
        lambda: all("gang of 2: only 0 fit" in t["reason"] for t in tasks(cell, "gang")),
        15,
        what="gang pending with its reason",
    )
    why = cell.borgcfg("why", "gang/1", check=True).stdout
    assert "gang of 2: only 0 fit" in why
    # One device frees up: still no room for the whole gang, so none of it is placed.
    r = cell.borgcfg("up", job(tmp_path, "iso", 2), check=True)
    assert r.returncode == 0
    wait_for(lambda: len(tasks(cell, "iso")) == 2, 15, what="iso scaled down")
    wait_for(
        lambda: all("gang of 2: only 1 fit" in t["reason"] for t in tasks(cell, "gang")),
        15,
        what="gang still waiting whole",
    )
    assert all(t["state"] == "pending" for t in tasks(cell, "gang"))
    cell.borgcfg("down", "iso", "--wait", check=True)
    wait_for(lambda: all_running(cell, "gang", 2), 30, what="gang running")
    held = [(t["machine"], tuple(t["gpus"])) for t in tasks(cell, "gang")]
    assert len(set(held)) == 2 and all(len(g) == 1 for _, g in held)


def test_restarted_borglet_keeps_every_task_on_its_devices(cell: Cell) -> None:
    before = {t["index"]: (t["machine"], t["gpus"]) for t in tasks(cell, "gang")}
    b0 = cell.borglets[0]
    b0.kill()
    new = Proc(b0.name, b0.argv, b0.log_path, info=dict(b0.info))
    new.start()
    cell.borglets[0] = new
    wait_for(
        lambda: "re-adopted" in new.log() and all_running(cell, "gang", 2),
        30,
        what="gang re-adopted",
    )
    assert {t["index"]: (t["machine"], t["gpus"]) for t in tasks(cell, "gang")} == before
    # A task whose process dies is restarted by the Borglet on the same devices.
    (i, (machine, (gpu,))) = sorted(before.items())[0]
    b = next(b for b in cell.borglets if b.info["name"] == machine)
    state = json.loads(Path(b.info["data"], "state.json").read_text())
    (t,) = [t for t in state["tasks"] if t["job"] == "gang" and t["index"] == i]
    assert t["gpus"] == [gpu]
    os.kill(t["pid"], signal.SIGKILL)
    wait_for(
        lambda: output(cell, "gang", i).count(f"visible={gpu} nvidia={gpu}\n") == 2,
        30,
        what="task restarted",
    )
    assert output(cell, "gang", i).count("visible=") == 2
