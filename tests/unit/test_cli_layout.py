"""borgcfg's layout: commands load lazily, so each loads only what it needs, and the command
list in `--help` is the commands' own help. (Layering as a whole: test_layers.py.)"""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest

from cfg.cli import COMMANDS, main
from tests.cluster import REPO


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_lazy_table_names_each_commands_module_and_help(name: str) -> None:
    module, short = COMMANDS[name]
    cmd = getattr(importlib.import_module(module), name)
    assert isinstance(cmd, click.Command)
    assert (cmd.help or "").strip().split("\n\n")[0].replace("\n", " ") == short
    assert main.get_command(click.Context(main), name) is cmd


def loaded_modules(*args: str) -> set[str]:
    """The modules a `borgcfg ARGS` process has loaded when it exits."""
    code = (
        "import sys, atexit\n"
        "atexit.register(lambda: print('\\n'.join(sorted(sys.modules)), file=sys.__stderr__))\n"
        "from cfg.cli import main\n"
        f"main({list(args)!r})\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    return set(r.stderr.split())


def test_help_and_validate_load_neither_grpc_nor_the_programs(tmp_path: object) -> None:
    for args in (["--help"], ["validate", "examples/hello.jsonnet"]):
        mods = loaded_modules(*args)
        assert "cfg.cli" in mods, args
        assert not {m for m in mods if m.split(".")[0] in ("grpc", "pysyncobj")}, args
        assert not {m for m in mods if m.split(".")[0] in ("borgmaster", "borglet")}, args
    assert "rich" not in {m.split(".")[0] for m in loaded_modules("--help")}
