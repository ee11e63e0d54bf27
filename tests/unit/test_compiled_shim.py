"""The shim compiled once per Borglet start (borglet/runtime/process.py `compiled_shim`):
a root-only cache, one file per shim source and interpreter, runnable as the shim itself."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from borglet.runtime.process import SHIM_PATH, compiled_shim


def test_the_compiled_shim_runs_as_the_shim_and_is_kept_private(tmp_path: Path) -> None:
    cache = tmp_path / "shim"
    path = compiled_shim(str(cache))
    assert path != SHIM_PATH and path.endswith(".pyc") and os.path.dirname(path) == str(cache)
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    # Run as the Borglet runs it: the shim's own usage line and exit code 2.
    r = subprocess.run([sys.executable, "-I", "-S", path], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "usage: shim.py" in r.stderr


def test_the_cache_is_reused_and_stale_shims_are_removed(tmp_path: Path) -> None:
    cache = tmp_path / "shim"
    cache.mkdir(mode=0o755)
    stale = cache / "shim-0000000000000000.cpython-00.pyc"
    stale.write_bytes(b"old")
    path = compiled_shim(str(cache))
    mtime = os.stat(path).st_mtime_ns
    assert not stale.exists()
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700  # tightened
    assert compiled_shim(str(cache)) == path
    assert os.stat(path).st_mtime_ns == mtime  # not compiled again


def test_a_cache_that_is_not_a_directory_falls_back_to_the_source(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "shim").symlink_to(tmp_path / "target")
    assert compiled_shim(str(tmp_path / "shim")) == SHIM_PATH
    assert os.listdir(tmp_path / "target") == []
