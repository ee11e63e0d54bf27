"""CI's strict skips (tests/conftest.py, .ci/run): with BORG_ALLOWED_SKIPS set, a test that
skips for any other reason fails, so a tool CI installed that went missing turns CI red."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cluster import REPO
from tests.conftest import strict_skip_failure


def test_only_allowed_skips_pass_when_skips_are_strict() -> None:
    assert strict_skip_failure("promtool not installed", None) is None
    assert strict_skip_failure("host is not cgroup v2 (no x)", "host is not cgroup v2") is None
    why = strict_skip_failure("promtool not installed", "host is not cgroup v2")
    assert why is not None and "promtool not installed" in why


def test_a_strict_run_fails_on_a_skip(tmp_path: Path) -> None:
    test = tmp_path / "test_skipper.py"
    test.write_text(
        "import pytest\n\n"
        "def test_tool() -> None:\n"
        "    pytest.skip('sometool not installed')\n\n"
        "def test_host() -> None:\n"
        "    pytest.skip('host is not cgroup v2')\n"
    )
    conftest = Path(REPO, "tests", "conftest.py").read_text()
    (tmp_path / "conftest.py").write_text(conftest)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO}
    lax = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert lax.returncode == 0 and "2 skipped" in lax.stdout, lax.stdout
    env["BORG_ALLOWED_SKIPS"] = "host is not cgroup v2"
    strict = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert strict.returncode == 1, strict.stdout
    assert "1 failed, 1 skipped" in strict.stdout, strict.stdout
    assert "sometool not installed" in strict.stdout
