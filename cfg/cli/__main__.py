"""`python -m cfg.cli`: the same as the `borgcfg` command."""

from __future__ import annotations

from cfg.cli import main

main()
