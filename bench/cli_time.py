"""`python -m bench.cli_time`: how long `borgcfg status` takes against a one-replica cell,
plaintext and with mutual TLS (9 runs each) -> bench/results/cli_time.json."""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Any

from bench.run import write
from tests.cluster import running_cell


def main(runs: int = 9) -> None:
    doc: dict[str, Any] = {"runs": runs, "command": "borgcfg status (no jobs)"}
    for tls in (False, True):
        with running_cell(1, 0, tls=tls) as c:
            argv = [".venv/bin/borgcfg", "--master", c.master_addrs]
            if tls:
                argv += ["--tls-dir", c.cert("admin", "admin")]
            ts = []
            for _ in range(runs):
                t = time.perf_counter()
                r = subprocess.run([*argv, "status"], capture_output=True)
                ts.append(time.perf_counter() - t)
                if r.returncode != 0:
                    raise SystemExit(f"borgcfg status failed: {r.stderr.decode()}")
            doc["tls" if tls else "plaintext"] = {
                "median_s": round(statistics.median(ts), 3),
                "min_s": round(min(ts), 3),
            }
    write("cli_time", doc)


if __name__ == "__main__":
    main()
