"""The import layers (docs/architecture.md): `cfg/` is the contract and imports none of the
programs; `borgmaster`, `borglet` and the borgcfg CLI sit on it and never import each other.
Read from the source (every import statement, including those inside functions), so a layer
violation fails here even where no test happens to load the module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.cluster import REPO

ALLOWED: dict[str, set[str]] = {
    # package -> top-level packages (or cfg modules) it may import from this project
    "cfg": {"cfg", "proto"},
    "borglet": {"borglet", "cfg", "proto"},
    "borgmaster": {"borgmaster", "cfg", "proto"},
}
CLIENT_ONLY = {"cfg.cli", "cfg.client"}
"""The borgcfg program (and its gRPC client): no program other than borgcfg imports them."""
PROJECT = {"cfg", "proto", "borglet", "borgmaster", "tests", "bench"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def sources(package: str) -> list[Path]:
    return sorted(p for p in Path(REPO, package).rglob("*.py") if "_pb2" not in p.name)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package: str) -> None:
    bad = []
    for path in sources(package):
        rel = path.relative_to(REPO)
        in_cli = str(rel).startswith(("cfg/cli", "cfg/client"))
        for line, mod in imports_of(path):
            top = mod.split(".")[0]
            if top not in PROJECT:
                continue
            if top not in ALLOWED[package]:
                bad.append(f"{rel}:{line} imports {mod}")
            elif not in_cli and any(mod == c or mod.startswith(c + ".") for c in CLIENT_ONLY):
                bad.append(f"{rel}:{line} imports {mod} (the borgcfg program)")
    assert not bad, "\n".join(bad)


def test_the_contract_and_the_borglet_never_load_pysyncobj() -> None:
    bad = [
        f"{p.relative_to(REPO)}:{line} imports {mod}"
        for package in ("cfg", "borglet")
        for p in sources(package)
        for line, mod in imports_of(p)
        if mod.split(".")[0] == "pysyncobj"
    ]
    assert not bad, "\n".join(bad)
