"""The committed gRPC modules are exactly what protoc makes of borg.proto today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO = "proto/borg/v1/borg.proto"
GENERATED = ("borg_pb2.py", "borg_pb2.pyi", "borg_pb2_grpc.py")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("proto")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            PROTO,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"protoc failed: {proc.stderr}"
    return out / "proto" / "borg" / "v1"


@pytest.mark.parametrize("name", GENERATED)
def test_generated_module_is_fresh(regenerated: Path, name: str) -> None:
    committed = REPO / "proto" / "borg" / "v1" / name
    fresh = regenerated / name
    assert fresh.exists(), f"protoc did not write {name}"
    assert committed.read_bytes() == fresh.read_bytes(), (
        f"proto/borg/v1/{name} is stale or hand-edited: run `make proto` and commit the result"
    )
